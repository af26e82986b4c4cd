"""`mashup states ...`: capture, search, mix and list recurrent states (State Soup)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mashup.console import print_json, print_table, status_console
from mashup.errors import MashupError
from mashup.options import DEFAULT_ZOO, JsonFlag, ZooDir

app = typer.Typer(
    help="State Soup: capture, search, mix and list recurrent-model states.",
    no_args_is_help=True,
)


def read_context(path: Path, limit: int | None = None) -> str:
    """A context file as text: MC items (.jsonl/.csv) become solved demonstrations, one per
    line; any other file is read as it is."""
    if not path.is_file():
        raise MashupError(f"{path}: context file not found", hint="give a text or JSONL file")
    if path.suffix in (".jsonl", ".csv"):
        from mashup.data.items import format_choice, format_prompt, load_items

        items = load_items(path, limit=limit)
        return "\n\n".join(
            format_prompt(item) + format_choice(item.choices[item.answer]) for item in items
        )
    text = path.read_text()
    if not text.strip():
        raise MashupError(f"{path}: the context is empty", hint="give a file with some text")
    return text


def _state_row(name: str, state: Any, path: Path | str) -> dict[str, Any]:
    return {
        "name": name,
        "task": state.task,
        "family": state.family,
        "n_tokens": state.n_tokens,
        "bytes": state.nbytes(),
        "path": str(path),
    }


@app.command("capture")
def capture(
    model: Annotated[Path, typer.Option("--model", help="Recurrent model folder.")],
    context: Annotated[
        Path, typer.Option("--context", help="Text file, or MC items read as demonstrations.")
    ],
    task: Annotated[str, typer.Option("--task", help="Task the context demonstrates.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="State file (default ZOO/states/TASK-HASH).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Use the first N items of a JSONL.")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Add the state to the zoo.")
    ] = True,
    name: Annotated[str | None, typer.Option("--name", help="Zoo entry name.")] = None,
    zoo_dir: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Read a context with the model and keep its state (safetensors, registered as kind state)."""
    from mashup.states.core import capture_state, load_recurrent_model, save_state

    text = read_context(context, limit)
    console = status_console(as_json)
    with console.status(f"loading {model}"):
        lm, tokenizer, fingerprint = load_recurrent_model(model)
    state = capture_state(lm, text, fingerprint=fingerprint, tokenizer=tokenizer, task=task)
    target = out or zoo_dir / "states" / f"{task}-{state.context_sha256[:8]}.safetensors"
    if target.exists():
        raise MashupError(f"{target}: already exists", hint="pass another --out or remove it")
    entry_name = None
    if register:
        from mashup.zoo import Zoo

        zoo = Zoo.open(zoo_dir)
        save_state(state, target)
        try:
            entry_name = zoo.add(target, task=task, name=name).name
        except BaseException:
            target.unlink(missing_ok=True)  # no orphan file when the catalog refuses it
            raise
    else:
        save_state(state, target)
    row = _state_row(entry_name or target.stem, state, target)
    if as_json:
        print_json(row)
        return
    console.print(
        f"captured {state.n_tokens} tokens of {task} into {target} ({state.nbytes()} bytes)"
        + (f", zoo entry {entry_name}" if entry_name else "")
    )


def _zoo_states(zoo_dir: Path, fingerprint: dict[str, Any] | None) -> list[tuple[str, Any]]:
    from mashup.states.core import load_state
    from mashup.zoo import Zoo

    zoo = Zoo.open(zoo_dir, create=False)
    found = []
    for entry in zoo.list(kind="state"):
        if fingerprint is not None and entry.fingerprint.base_model != fingerprint["digest"]:
            continue  # another model's state
        found.append((entry.name, load_state(entry.path)))
    return found


@app.command("search")
def search(
    model: Annotated[Path, typer.Option("--model", help="Model the states belong to.")],
    query: Annotated[Path, typer.Option("--query", help="A few target examples (text/JSONL).")],
    by: Annotated[str, typer.Option("--by", help="state | embedding")] = "state",
    layers: Annotated[
        str | None, typer.Option("--layers", help="Comma list of layer indices (default all).")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1)] = 5,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    zoo_dir: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Rank the zoo's states of this model by similarity to a query."""
    from mashup.states.core import capture_state, load_recurrent_model, search_states

    if by not in ("state", "embedding"):
        raise MashupError(f"unknown --by {by!r}", hint="use state or embedding")
    layer_list = None
    if layers:
        try:
            layer_list = [int(x) for x in layers.split(",")]
        except ValueError as exc:
            raise MashupError(f"bad --layers {layers!r}", hint="e.g. --layers 1,3") from exc
    text = read_context(query, limit)
    lm, tokenizer, fingerprint = load_recurrent_model(model)
    candidates = _zoo_states(zoo_dir, fingerprint)
    if not candidates:
        raise MashupError(
            f"{zoo_dir}: no states of this model in the zoo",
            hint="capture some with mashup states capture",
        )
    query_state = None
    if by == "state":
        query_state = capture_state(lm, text, fingerprint=fingerprint, tokenizer=tokenizer)
    hits = search_states(
        candidates,
        query_state=query_state,
        query_texts=[line for line in text.splitlines() if line.strip()],
        by=by,
        layers=layer_list,
        k=k,
    )
    rows = [{"name": h.name, "task": h.task, "score": h.score} for h in hits]
    if as_json:
        print_json({"by": by, "hits": rows})
        return
    print_table(
        f"states by {by} similarity",
        ["rank", "name", "task", "cosine"],
        [[i + 1, r["name"], r["task"], f"{r['score']:.4f}"] for i, r in enumerate(rows)],
    )


@app.command("mix")
def mix(
    states: Annotated[list[str], typer.Argument(help="State files or zoo entry names.")],
    out: Annotated[Path, typer.Option("--out", help="Where the mixed state goes.")],
    mode: Annotated[str, typer.Option("--mode", help="weighted | uniform | sum | decay")] = (
        "uniform"
    ),
    weights: Annotated[
        str | None, typer.Option("--weights", help="Comma list, one per state (mode weighted).")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="Task of the mix.")] = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Add the mix to the zoo.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT.")] = False,
    zoo_dir: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Combine states of one model into a new state file."""
    from mashup.states.core import is_state_path, mix_states, resolve_state, save_state

    weight_list = None
    if weights is not None:
        try:
            weight_list = [float(w) for w in weights.split(",")]
        except ValueError as exc:
            raise MashupError(f"bad --weights {weights!r}", hint="e.g. --weights 0.7,0.3") from exc
    if out.exists() and not force:
        raise MashupError(f"{out}: already exists", hint="pass --force to replace it")
    zoo = None
    if register or not all(is_state_path(s) for s in states):  # names need the catalog
        from mashup.zoo import Zoo

        zoo = Zoo.open(zoo_dir, create=register)
    loaded = [resolve_state(ref, zoo) for ref in states]
    mixed = mix_states(
        [state for state, _ in loaded],
        weights=weight_list,
        mode=mode,
        task=task or "+".join(sorted({s.task or "?" for s, _ in loaded})),
    )
    mixed.extra["mixed_from"] = json.dumps([label for _, label in loaded])
    save_state(mixed, out)
    entry_name = None
    if register and zoo is not None:
        try:
            entry_name = zoo.add(out, task=mixed.task, name=None).name
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    row = _state_row(entry_name or out.stem, mixed, out)
    if as_json:
        print_json({**row, "mode": mode, "from": [label for _, label in loaded]})
        return
    status_console(False).print(f"mixed {len(loaded)} states ({mode}) into {out}")


@app.command("generate")
def generate_text(
    model: Annotated[Path, typer.Option("--model", help="Recurrent model folder.")],
    state: Annotated[
        str | None, typer.Option("--state", help="State file or zoo entry to start from.")
    ] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Text read after the state.")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 40,
    zoo_dir: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Greedy generation from a (captured or mixed) state."""
    from mashup.states.core import (
        check_compatible,
        context_ids,
        generate,
        is_state_path,
        load_recurrent_model,
        resolve_state,
    )
    from mashup.states.families import family_of

    lm, tokenizer, fingerprint = load_recurrent_model(model)
    if tokenizer is None:
        raise MashupError(f"{model}: no tokenizer files", hint="save the tokenizer with it")
    start = None
    if state is not None:
        zoo = None
        if not is_state_path(state):
            from mashup.zoo import Zoo

            zoo = Zoo.open(zoo_dir, create=False)
        start, _ = resolve_state(state, zoo)
        check_compatible(start, fingerprint, family_of(lm))
    if not prompt:
        raise MashupError("--prompt is empty", hint="give the text to continue")
    tokens = generate(lm, start, context_ids(prompt, tokenizer), max_new_tokens)
    text = tokenizer.decode(tokens)
    if as_json:
        print_json({"prompt": prompt, "completion": text, "tokens": tokens})
        return
    status_console(False).print(prompt + text, markup=False)


@app.command("list")
def list_states(zoo_dir: ZooDir = DEFAULT_ZOO, as_json: JsonFlag = False) -> None:
    """The zoo's states."""
    from mashup.zoo import Zoo

    zoo = Zoo.open(zoo_dir, create=False)
    entries = zoo.list(kind="state")
    rows = [
        {
            "name": e.name,
            "task": e.task,
            "model": e.fingerprint.base_model,
            "n_tokens": (e.fingerprint.meta or {}).get("state", {}).get("n_tokens"),
            "path": str(e.path),
        }
        for e in entries
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        "states", ["name", "task", "model", "tokens", "path"], [list(r.values()) for r in rows]
    )
