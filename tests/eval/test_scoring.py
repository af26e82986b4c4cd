"""Multiple-choice scoring: the math of acc / acc_norm, batching, adapters, letters, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mashup import cli
from mashup.data import MCItem, format_choice, format_prompt, write_items
from mashup.errors import MashupError
from mashup.eval import evaluate_items, load_model, score_choices, wilson_interval
from mashup.eval.scoring import encode_pair, letter_prompt
from tests.factories import make_tiny_letter_llama, make_tiny_llama, make_tiny_lora

VOCAB = 64


def _items(n: int = 6) -> list[MCItem]:
    """Word-level items the tiny tokenizer knows (w0..w59), with 2-4 choices of mixed length."""
    items = []
    for i in range(n):
        choices = [
            " ".join(f"w{(i + j + k) % 50 + 5}" for k in range(1 + (j + i) % 3))
            for j in range(2 + i % 3)
        ]
        items.append(
            MCItem(f"w{i + 10} w{i + 11} w{i + 12}", choices, i % len(choices), id=f"i{i}")
        )
    return items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("m") / "base", seed=1, vocab_size=VOCAB)


def _reference_scores(model, tokenizer, items: list[MCItem]) -> list[list[float]]:
    """One unpadded forward per (item, choice), straight from the definition."""
    scores = []
    for item in items:
        per_choice = []
        for choice in item.choices:
            context, continuation = encode_pair(
                tokenizer, format_prompt(item), format_choice(choice)
            )
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            per_choice.append(
                sum(
                    float(logprobs[len(context) + t - 1, tok]) for t, tok in enumerate(continuation)
                )
            )
        scores.append(per_choice)
    return scores


def test_scores_match_unbatched_reference_for_any_batch_size(tiny: Path) -> None:
    model, tokenizer = load_model(tiny)
    items = _items()
    reference = _reference_scores(model, tokenizer, items)
    for batch_size in (1, 3, 64):
        got = score_choices(model, tokenizer, items, batch_size=batch_size)
        assert [len(s) for s in got] == [len(i.choices) for i in items]
        for row, ref in zip(got, reference, strict=True):
            assert row == pytest.approx(ref, abs=1e-4)


def test_acc_and_acc_norm_differ_on_a_hand_built_case(tiny: Path) -> None:
    """With a uniform next-token distribution a choice's log-likelihood is -tokens*log(V):
    acc prefers the one-token choice, acc_norm the longer choice with fewer nats per char."""
    model, tokenizer = load_model(tiny)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # all logits equal: uniform over the vocabulary
    short, long = "w1", "w2 w3 w4"
    items = [MCItem("w9 w8", [short, long], 1), MCItem("w7", [long, short], 1)]
    result = evaluate_items(model, tokenizer, items)
    log_v = math.log(VOCAB)
    for item_score in result.per_item:
        assert sorted(item_score.loglikelihoods) == pytest.approx([-3 * log_v, -log_v], abs=1e-4)
        assert item_score.n_chars == [len(c) for c in items[0].choices] or item_score.n_chars == [
            len(c) for c in items[1].choices
        ]
    # item 0: acc picks the short one (wrong), acc_norm the long one (right); item 1 inverts.
    assert [s.pred for s in result.per_item] == [0, 1]
    assert [s.pred_norm for s in result.per_item] == [1, 0]
    assert (result.acc, result.acc_norm, result.n) == (0.5, 0.5, 2)
    assert result.nll == pytest.approx((3 * log_v + log_v) / 4, abs=1e-4)


def test_acc_matches_argmax_of_scores(tiny: Path) -> None:
    model, tokenizer = load_model(tiny)
    items = _items(9)
    result = evaluate_items(model, tokenizer, items, batch_size=4)
    scores = score_choices(model, tokenizer, items)
    expected_acc = sum(
        max(range(len(s)), key=s.__getitem__) == i.answer
        for s, i in zip(scores, items, strict=True)
    ) / len(items)
    expected_norm = sum(
        max(range(len(s)), key=lambda j, s=s, i=i: s[j] / len(i.choices[j])) == i.answer
        for s, i in zip(scores, items, strict=True)
    ) / len(items)
    assert result.acc == pytest.approx(expected_acc)
    assert result.acc_norm == pytest.approx(expected_norm)
    lo, hi = result.ci95()
    assert lo <= result.acc <= hi


def test_adapter_and_merged_model_score_the_same(tiny: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_tiny_lora(tmp_path / "lora", tiny, seed=3)
    merged_dir = tmp_path / "merged"
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny), adapter
    ).merge_and_unload()
    merged.save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(merged_dir)
    items = _items()
    via_adapter = score_choices(*load_model(adapter), items)
    via_base_and_adapter = score_choices(*load_model(adapter, base=tiny), items)
    via_merged = score_choices(*load_model(merged_dir), items)
    base_scores = score_choices(*load_model(tiny), items)
    for a, b, m in zip(via_adapter, via_base_and_adapter, via_merged, strict=True):
        assert a == pytest.approx(m, abs=1e-4)
        assert b == pytest.approx(m, abs=1e-4)
    flat = [x for row in via_adapter for x in row]
    flat_base = [x for row in base_scores for x in row]
    assert flat != pytest.approx(flat_base, abs=1e-4)  # the adapter does change the scores


def test_load_model_errors(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(MashupError, match="no such model directory"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MashupError, match="neither config.json nor adapter_config.json"):
        load_model(tmp_path / "empty")
    adapter = make_tiny_lora(tmp_path / "lora", tiny)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MashupError, match="not a local model folder"):
        load_model(adapter)
    assert load_model(adapter, base=tiny)[0] is not None
    bare = make_tiny_llama(tmp_path / "bare", vocab_size=VOCAB, tokenizer=False)
    with pytest.raises(MashupError, match="no tokenizer found"):
        load_model(bare)


def test_encode_pair_moves_trailing_space_to_continuation(tiny: Path) -> None:
    _, tokenizer = load_model(tiny)
    assert encode_pair(tokenizer, "w1 w2 ", "w3") == encode_pair(tokenizer, "w1 w2", " w3")


def _letter_model(path: Path) -> Path:
    """A tiny model whose word-level tokenizer knows the answer letters A..E."""
    return make_tiny_letter_llama(path, vocab_size=VOCAB)


def test_letter_format_scores_next_token_of_letters(tmp_path: Path) -> None:
    model, tokenizer = load_model(_letter_model(tmp_path / "m"))
    items = _items()
    result = evaluate_items(model, tokenizer, items, format="letter", batch_size=4)
    letter_ids = [tokenizer.convert_tokens_to_ids(x) for x in "ABCDE"]
    for item, item_score in zip(items, result.per_item, strict=True):
        ids = tokenizer(letter_prompt(item, tokenizer), add_special_tokens=False).input_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
        expected = [float(logprobs[t]) for t in letter_ids[: len(item.choices)]]
        assert item_score.loglikelihoods == pytest.approx(expected, abs=1e-4)
    assert result.acc == result.acc_norm
    assert result.format == "letter"


def test_letter_prompt_uses_chat_template(tmp_path: Path) -> None:
    _, tokenizer = load_model(_letter_model(tmp_path / "m"))
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    prompt = letter_prompt(MCItem("w5?", ["w6", "w7"], 0), tokenizer)
    assert prompt.startswith("<s>user: w5?\nA. w6\nB. w7\n")
    assert prompt.endswith("<s>assistant:")


def test_letter_format_refuses_tokenizer_without_letters(tiny: Path) -> None:
    model, tokenizer = load_model(tiny)
    with pytest.raises(MashupError, match="distinct tokens"):
        evaluate_items(model, tokenizer, _items(2), format="letter")


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(1.0, 10)[0] == pytest.approx(0.7225, abs=1e-3)
    assert wilson_interval(0.3, 1000)[1] - wilson_interval(0.3, 1000)[0] < (
        wilson_interval(0.3, 100)[1] - wilson_interval(0.3, 100)[0]
    )


# --- CLI --------------------------------------------------------------------------------------


def test_cli_eval_json(tiny: Path, tmp_path: Path) -> None:
    data = write_items(_items(), tmp_path / "items.jsonl")
    result = CliRunner().invoke(
        cli.app, ["eval", str(tiny), "--data", str(data), "--limit", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 4
    model, tokenizer = load_model(tiny)
    expected = evaluate_items(model, tokenizer, _items()[:4])
    assert report["acc"] == pytest.approx(expected.acc)
    assert report["acc_norm"] == pytest.approx(expected.acc_norm)
    assert report["acc_ci95"][0] <= report["acc"] <= report["acc_ci95"][1]


def test_cli_eval_table(tiny: Path, tmp_path: Path) -> None:
    data = write_items(_items(3), tmp_path / "items.jsonl")
    result = CliRunner().invoke(cli.app, ["eval", str(tiny), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "acc_norm" in result.output and "95% CI" in result.output


def test_cli_eval_bad_data_and_format(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"], "answer": 3}\n')
    result = CliRunner().invoke(cli.app, ["eval", str(tiny), "--data", str(bad)])
    assert result.exit_code == 2
    assert "error:" in result.output and "bad.jsonl:1" in result.output
    good = write_items(_items(2), tmp_path / "good.jsonl")
    result = CliRunner().invoke(
        cli.app, ["eval", str(tiny), "--data", str(good), "--format", "essay"]
    )
    assert result.exit_code == 2 and "error:" in result.output


def test_cli_eval_state_delegates(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    import mashup.states

    data = write_items(_items(2), tmp_path / "items.jsonl")
    state = tmp_path / "s.safetensors"
    calls = []

    def fake_eval_with_state(model_path, data_path, state_path, **kwargs):
        calls.append((model_path, data_path, state_path, kwargs))
        from mashup.eval import EvalResult

        return EvalResult(acc=1.0, acc_norm=0.5, n=2, nll=0.1)

    monkeypatch.setattr(mashup.states, "eval_with_state", fake_eval_with_state, raising=False)
    result = CliRunner().invoke(
        cli.app, ["eval", str(tiny), "--data", str(data), "--state", str(state), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["acc"] == 1.0
    assert calls[0][:3] == (tiny, data, state)
    monkeypatch.undo()  # the real State Soup path: a missing state file is one clear error
    result = CliRunner().invoke(
        cli.app, ["eval", str(tiny), "--data", str(data), "--state", str(state)]
    )
    assert result.exit_code == 2 and "s.safetensors: state file not found" in result.output


# --- the prompt read once per item (shared key/value cache) -------------------------------------


def _whole_row_scores(model, tokenizer, items, batch_size: int = 8):
    """The same scores with prompt sharing turned off (every prompt + choice read whole)."""
    return score_choices(model, tokenizer, items, batch_size=batch_size, share_prompt=False)


def _count_forwards(model) -> list[int]:
    calls = [0]
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_shared_prompt_scores_equal_reading_each_choice_whole(tiny: Path, batch_size: int) -> None:
    from mashup.eval.scoring import _cache_keyword

    model, tokenizer = load_model(tiny)
    items = _items(9)
    assert _cache_keyword(model) in ("cache", "past_key_values")
    calls = _count_forwards(model)
    shared = score_choices(model, tokenizer, items, batch_size=batch_size)
    shared_calls = calls[0]
    whole = _whole_row_scores(model, tokenizer, items, batch_size)
    # Two forwards per group of items (prompts, then continuations) instead of one.
    assert shared_calls == 2 * (calls[0] - shared_calls) > 0
    for a, b, ref in zip(shared, whole, _reference_scores(model, tokenizer, items), strict=True):
        assert a == pytest.approx(b, abs=1e-4) and a == pytest.approx(ref, abs=1e-4)


def test_shared_prompt_scores_of_a_peft_adapter(tiny: Path, tmp_path: Path) -> None:
    adapter = make_tiny_lora(tmp_path / "lora", tiny, seed=3)
    model, tokenizer = load_model(adapter, base=tiny)
    items = _items(6)
    shared = score_choices(model, tokenizer, items)
    whole = _whole_row_scores(model, tokenizer, items)
    for a, b in zip(shared, whole, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_shared_prompt_scores_with_sliding_window_and_bos(tmp_path: Path) -> None:
    """Gemma-3: a BOS prefix, and a sliding window shorter than the prompts."""
    from tests.factories import make_tiny_gemma3

    make_tiny_gemma3(tmp_path / "gemma", VOCAB)
    model, tokenizer = load_model(tmp_path / "gemma")
    items = _items(6)
    shared = score_choices(model, tokenizer, items, batch_size=6)
    whole = _whole_row_scores(model, tokenizer, items, batch_size=6)
    for a, b in zip(shared, whole, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_rows_that_need_truncation_are_read_whole(tiny: Path) -> None:
    """Past max_position_embeddings (64) the context is cut from the left, as lm-eval does:
    those items take the whole-row path, the others still share their prompt."""
    model, tokenizer = load_model(tiny)
    long_question = " ".join(f"w{5 + i % 50}" for i in range(80))
    items = [*_items(4), MCItem(long_question, ["w1", "w2 w3"], 0)]
    shared = score_choices(model, tokenizer, items, batch_size=2)
    whole = _whole_row_scores(model, tokenizer, items, batch_size=2)
    for a, b in zip(shared, whole, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_recurrent_models_do_not_share_prompts() -> None:
    from mashup.eval.scoring import _cache_keyword
    from mashup.models import LinearAttnConfig, LinearAttnForCausalLM

    config = LinearAttnConfig(
        vocab_size=VOCAB, d_model=16, n_heads=2, feature_dim=4, layers=["conv", "linear_attn"]
    )
    assert _cache_keyword(LinearAttnForCausalLM(config)) is None


def test_output_projection_reads_a_contiguous_input(tiny: Path) -> None:
    """The kept positions reach the vocabulary projection as a contiguous tensor (a strided
    view made CPU bf16 projections two orders of magnitude slower), and the hook that copies
    them is gone after scoring."""
    model, tokenizer = load_model(tiny)
    head = model.get_output_embeddings()
    seen: list[bool] = []
    head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    pre_hooks = dict(head._forward_pre_hooks)
    # Six prompts in one forward, of which the projection keeps the last column.
    score_choices(model, tokenizer, _items(6), batch_size=64)
    assert seen and all(seen)
    assert dict(head._forward_pre_hooks) == pre_hooks
