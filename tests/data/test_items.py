"""Reading and writing multiple-choice items, and how bad rows are reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mashup.data import MCItem, format_choice, format_prompt, load_items, write_items
from mashup.errors import MashupError

ITEMS = [
    MCItem("What is 1+1?", ["2", "3"], 0, id="q1"),
    MCItem("Pick the colour", ["red", "dog", "cat"], 0, context="Colours: red, blue."),
    MCItem("Last?", ["a", "b", "c", "d"], 3),
]


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = write_items(ITEMS, tmp_path / "sub" / "items.jsonl")
    assert load_items(path) == ITEMS
    first = json.loads(path.read_text().splitlines()[0])
    assert "context" not in first  # unset optional fields are left out


def test_limit_and_seed(tmp_path: Path) -> None:
    items = [MCItem(f"q{i}", ["a", "b"], i % 2, id=str(i)) for i in range(20)]
    path = write_items(items, tmp_path / "items.jsonl")
    assert load_items(path, limit=3) == items[:3]
    shuffled = load_items(path, limit=5, seed=1)
    assert shuffled == load_items(path, limit=5, seed=1)
    assert shuffled != items[:5]
    assert len(load_items(path, seed=1)) == 20


def test_csv_with_json_choices_column(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "choices", "answer"])
        writer.writerow(["a", "Which, of these?", json.dumps(["x, y", "z"]), "1"])
    assert load_items(path) == [MCItem("Which, of these?", ["x, y", "z"], 1, id="a")]


def test_csv_with_choice_columns_and_letter_answers(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("question,A,B,C,answer\nq1,x,y,z,C\nq2,u,v,,A\n")
    assert load_items(path) == [MCItem("q1", ["x", "y", "z"], 2), MCItem("q2", ["u", "v"], 0)]


def test_dataset_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [
        {"question": "q", "choices": ["a", "b"], "answer": 1},
        {"question": "r", "choices": ["c", "d"], "answer": 0},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert load_items(tmp_path / "ds") == [MCItem("q", ["a", "b"], 1), MCItem("r", ["c", "d"], 0)]
    bad = [{"question": "q", "choices": ["a", "b"], "answer": 5}]
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(MashupError, match=r"bad:row 0: answer 5 out of range"):
        load_items(tmp_path / "bad")


GOOD = json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0})


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question": "q", "choices": ["a", "b"]}', "missing field 'answer'"),
        ('{"choices": ["a", "b"], "answer": 0}', "missing field 'question'"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "answer 2 out of range"),
        ('{"question": "q", "choices": ["a", "b"], "answer": -1}', "answer -1 out of range"),
        ('{"question": "q", "choices": [], "answer": 0}', "'choices' must be a non-empty list"),
        ('{"question": "q", "choices": ["a", " "], "answer": 0}', "empty choice"),
        ('{"question": "q", "choices": "ab", "answer": 0}', "'choices' must be a non-empty list"),
        ('{"question": "q", "choices": ["a", 3], "answer": 0}', "every choice must be a string"),
        ('{"question": "q", "choices": ["a", "b"], "answer": "x"}', "'answer' must be an integer"),
        ('{"question": "q", "choices": ["a", "b"], "answer": true}', "must be an integer"),
        ('{"question": "q", "choices": ["a"], ', "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_jsonl_rows_name_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [GOOD, "", GOOD, bad_line, GOOD])
    with pytest.raises(MashupError) as info:
        load_items(path)
    assert f"{path}:4:" in str(info.value)
    assert message in str(info.value)


def test_bad_row_after_limit_is_still_reported(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [GOOD, GOOD, '{"question": "q"}'])
    with pytest.raises(MashupError, match=r"data.jsonl:3: missing field"):
        load_items(path, limit=1)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('q,"[""a"", ""b""]",7', "answer 7 out of range"),
        ('q,"[""a"", ",0', "'choices' is not a JSON list"),
        ("q,[],0", "'choices' must be a non-empty list"),
        (',"[""a""]",0', "missing field 'question'"),
    ],
)
def test_bad_csv_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(f'question,choices,answer\nq,"[""a"", ""b""]",1\n{row}\n')
    with pytest.raises(MashupError) as info:
        load_items(path)
    assert f"{path}:3:" in str(info.value)
    assert message in str(info.value)


def test_csv_without_choices_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("question,answer\nq,0\n")
    with pytest.raises(MashupError, match="no 'choices' column"):
        load_items(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(MashupError, match="no such file"):
        load_items(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MashupError, match="no items"):
        load_items(tmp_path / "empty.jsonl")


def test_prompt_format_matches_lm_eval_arc() -> None:
    item = MCItem("Which is a metal?", ["iron", "wood"], 0)
    assert format_prompt(item) == "Question: Which is a metal?\nAnswer:"
    assert format_choice("iron") == " iron"
    with_passage = MCItem("is it?", ["yes", "no"], 0, context="A passage.")
    assert format_prompt(with_passage) == "A passage.\nQuestion: is it?\nAnswer:"


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
nonblank = text.filter(lambda s: s.strip() != "")


@st.composite
def items_strategy(draw: st.DrawFn) -> MCItem:
    choices = draw(st.lists(nonblank, min_size=1, max_size=5))
    return MCItem(
        question=draw(text),
        choices=choices,
        answer=draw(st.integers(0, len(choices) - 1)),
        id=draw(st.none() | nonblank),
        context=draw(st.none() | nonblank),
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(items_strategy(), min_size=1, max_size=5))
def test_write_then_load_is_identity(
    tmp_path_factory: pytest.TempPathFactory, items: list[MCItem]
) -> None:
    path = write_items(items, tmp_path_factory.mktemp("rt") / "items.jsonl")
    assert load_items(path) == items
