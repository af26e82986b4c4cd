"""Multiple-choice items: the one dataset format every stage reads and writes.

A dataset is JSONL with one item per line::

    {"question": "...", "choices": ["...", "..."], "answer": 0, "id": "q1", "context": "..."}

CSV files (``choices`` as a JSON list column, or ``choice0..N`` / ``A..E`` columns) and folders
written by ``datasets.Dataset.save_to_disk`` are read too. Every bad row is reported with the
file and line (CSV: line of the record; dataset folders: row index) it came from.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from mashup.errors import MashupError, check_choice
from mashup.files import share_like_umask

FORMAT_HINT = (
    'each item needs "question" (string), "choices" (non-empty list of strings) and '
    '"answer" (0-based index into choices); "id" and "context" are optional'
)


@dataclass
class MCItem:
    """One multiple-choice question; ``answer`` is the 0-based index of the right choice."""

    question: str
    choices: list[str]
    answer: int
    id: str | None = None
    context: str | None = None


# How a model reads an item: "mc" scores each choice's text after the prompt (lm-eval);
# "letter" lists lettered choices in a chat prompt and reads the answer letter (the Mashup paper).
Format = Literal["mc", "letter"]
FORMATS: tuple[str, ...] = get_args(Format)


def check_format(format: str, name: str = "format") -> Format:
    """``format`` if it is one every stage knows, else one clear error naming ``name`` (the
    option, ``--format`` on the command line)."""
    return check_choice(format, FORMATS, name)  # type: ignore[return-value]


def format_prompt(item: MCItem) -> str:
    """The text the model reads before a choice (lm-evaluation-harness's ARC template).

    ``context`` (a passage, as in BoolQ) goes on its own line before the question.
    """
    prompt = f"Question: {item.question}\nAnswer:"
    return f"{item.context}\n{prompt}" if item.context else prompt


def format_choice(choice: str) -> str:
    """The continuation scored for a choice: lm-eval's target delimiter is one space."""
    return f" {choice}"


# --- validation -------------------------------------------------------------------------------


def item_from_record(record: Any, where: str) -> MCItem:
    """Validate one parsed record; ``where`` is ``file:line`` for the error message."""
    if not isinstance(record, Mapping):
        raise MashupError(
            f"{where}: expected a JSON object, got {type(record).__name__}", hint=FORMAT_HINT
        )
    missing = [
        key for key in ("question", "choices", "answer") if key not in record or record[key] is None
    ]
    if missing:
        raise MashupError(
            f"{where}: missing field {', '.join(repr(m) for m in missing)}", hint=FORMAT_HINT
        )
    question = record["question"]
    if not isinstance(question, str):
        raise MashupError(f"{where}: 'question' must be a string", hint=FORMAT_HINT)
    choices = record["choices"]
    if not isinstance(choices, list) or not choices:
        raise MashupError(f"{where}: 'choices' must be a non-empty list", hint=FORMAT_HINT)
    if not all(isinstance(c, str) for c in choices):
        raise MashupError(f"{where}: every choice must be a string", hint=FORMAT_HINT)
    if any(not c.strip() for c in choices):
        raise MashupError(f"{where}: empty choice in 'choices'", hint=FORMAT_HINT)
    answer = record["answer"]
    if isinstance(answer, str) and re.fullmatch(r"\s*\d+\s*", answer):
        answer = int(answer)  # CSV cells and some exports carry numbers as text
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise MashupError(
            f"{where}: 'answer' must be an integer index, got {answer!r}", hint=FORMAT_HINT
        )
    if not 0 <= answer < len(choices):
        raise MashupError(
            f"{where}: answer {answer} out of range for {len(choices)} choices",
            hint=FORMAT_HINT,
        )
    item_id = record.get("id")
    context = record.get("context")
    if context is not None and not isinstance(context, str):
        raise MashupError(f"{where}: 'context' must be a string", hint=FORMAT_HINT)
    return MCItem(
        question=question,
        choices=list(choices),
        answer=answer,
        id=None if item_id is None or item_id == "" else str(item_id),
        context=context or None,
    )


# --- readers ----------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[MCItem]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MashupError(
                    f"{path}:{line_no}: bad JSON ({exc.msg})", hint=FORMAT_HINT
                ) from exc
            yield item_from_record(record, f"{path}:{line_no}")


_CHOICE_COLUMN = re.compile(r"^(?:choice|option|ending)_?(\d+)$|^([A-Ha-h])$", re.IGNORECASE)


def _choice_columns(header: list[str]) -> list[str]:
    """Columns holding one choice each, in order: choice0.., option1.., ending0.., or A..H."""
    numbered = []
    for name in header:
        match = _CHOICE_COLUMN.match(name.strip())
        if match:
            order = int(match.group(1)) if match.group(1) else ord(match.group(2).upper())
            numbered.append((order, name))
    return [name for _, name in sorted(numbered)]


def _read_csv(path: Path) -> Iterator[MCItem]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        choice_columns = [] if "choices" in header else _choice_columns(header)
        if "choices" not in header and not choice_columns:
            raise MashupError(
                f"{path}:1: no 'choices' column and no choice0/choice1/... or A/B/... columns",
                hint=FORMAT_HINT,
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            record: dict[str, Any] = {k: v for k, v in row.items() if k is not None}
            if choice_columns:
                # Blank trailing cells mean that row has fewer choices.
                record["choices"] = [row[c] for c in choice_columns if (row[c] or "").strip()]
            else:
                raw = row.get("choices") or ""
                try:
                    record["choices"] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise MashupError(
                        f"{where}: 'choices' is not a JSON list ({exc.msg})", hint=FORMAT_HINT
                    ) from exc
            for key in ("question", "answer"):
                if record.get(key) == "":
                    record[key] = None
            answer = record.get("answer")
            if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
                record["answer"] = ord(answer.strip().upper()) - ord("A")  # letter answers
            yield item_from_record(record, where)


def _read_dataset_dir(path: Path) -> Iterator[MCItem]:
    try:
        import datasets
    except ImportError as exc:
        raise MashupError(
            f"{path} is a folder; reading dataset folders needs the 'datasets' package",
            hint="pip install datasets, or convert the data to JSONL",
        ) from exc
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise MashupError(
            f"{path}: not a datasets.save_to_disk folder ({exc})", hint=FORMAT_HINT
        ) from exc
    if isinstance(data, datasets.DatasetDict):
        raise MashupError(
            f"{path} holds several splits ({', '.join(data)})",
            hint=f"point at one split folder, e.g. {path / next(iter(data))}",
        )
    for index, row in enumerate(data):
        yield item_from_record(row, f"{path}:row {index}")


def iter_items(path: Path | str) -> Iterator[MCItem]:
    """Yield the items of a JSONL, CSV or dataset folder, validating as it goes."""
    path = Path(path)
    if not path.exists():
        raise MashupError(f"{path}: no such file", hint="give a JSONL or CSV file of items")
    if path.is_dir():
        return _read_dataset_dir(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    return _read_jsonl(path)


def load_items(path: Path | str, limit: int | None = None, seed: int | None = None) -> list[MCItem]:
    """Read and validate every item; with ``seed``, shuffle before taking the first ``limit``.

    Validation covers the whole file, so a bad row after ``limit`` is still reported.
    """
    items = list(iter_items(path))
    if not items:
        raise MashupError(f"{path}: no items", hint=FORMAT_HINT)
    if seed is not None:
        random.Random(seed).shuffle(items)
    return items[:limit] if limit is not None else items


def item_to_dict(item: MCItem) -> dict[str, Any]:
    """The JSONL record of an item, dropping unset optional fields."""
    return {k: v for k, v in asdict(item).items() if v is not None}


def write_items(items: Iterable[MCItem], path: Path | str) -> Path:
    """Write items as JSONL atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item_to_dict(item), ensure_ascii=False) + "\n")
        share_like_umask(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
