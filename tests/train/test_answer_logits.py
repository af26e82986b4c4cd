"""Training on left-padded rows with logits at the answer positions only (``answer_loss``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mashup.data import load_items
from mashup.eval.scoring import reads_left_padded
from mashup.train.config import TrainConfig
from mashup.train.trainer import PadCollator, answer_loss, build_examples, load_for_training
from tests.train.conftest import TINY_LORA


def _tiny_gemma3(path: Path) -> Path:
    """Gemma-3: a BOS prefix, and a sliding window shorter than the rows."""
    from tests.factories import make_tiny_gemma3

    return path if (path / "config.json").is_file() else make_tiny_gemma3(path)


def _model_and_examples(tiny: dict[str, Path], full: bool = False, family: str = "llama"):
    base = tiny["base"] if family == "llama" else _tiny_gemma3(tiny["root"] / "gemma3")
    cfg = TrainConfig(
        base=base, data=tiny["train"], out=tiny["root"] / "unused", full=full, **TINY_LORA
    )
    model, tokenizer, _ = load_for_training(cfg)
    items = load_items(tiny["train"], limit=6)
    # Rows of different lengths, and one cut down to its answer alone.
    examples = build_examples(items, tokenizer, model, 256)
    examples[2] = {k: v[3:] for k, v in examples[2].items()}
    examples.append(build_examples(items[:1], tokenizer, model, 2)[0])
    with torch.no_grad():  # LoRA's B starts at zero: make the adapter matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model, tokenizer, examples


def test_left_collator_puts_answers_last_with_their_positions(tiny: dict[str, Path]) -> None:
    _, tokenizer, examples = _model_and_examples(tiny)
    batch = PadCollator(tokenizer.pad_token_id, left=True)(examples)
    width = max(len(e["input_ids"]) for e in examples)
    answers = [sum(label != -100 for label in e["labels"]) for e in examples]
    keep = min(width, max(answers) + 1)
    assert batch["logits_to_keep"].tolist() == list(range(width - keep, width))
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["input_ids"][row, width - n :].tolist() == example["input_ids"]
        # A row's first token has nothing before it to predict it, as in the shifted loss.
        assert batch["labels"][row, width - n :].tolist() == [-100, *example["labels"][1:]]
        assert batch["attention_mask"][row].sum() == n
        assert batch["position_ids"][row, width - n :].tolist() == list(range(n))
    right = PadCollator(tokenizer.pad_token_id)(examples)
    assert set(right) == {"input_ids", "labels", "attention_mask"}
    assert (
        right["input_ids"][0, : len(examples[0]["input_ids"])].tolist() == examples[0]["input_ids"]
    )


@pytest.mark.parametrize("full,family", [(False, "llama"), (True, "llama"), (False, "gemma3")])
def test_answer_loss_and_gradients_equal_the_models_own(
    tiny: dict[str, Path], full, family
) -> None:
    model, tokenizer, examples = _model_and_examples(tiny, full=full, family=family)
    assert reads_left_padded(model)
    model.train()

    def loss_and_grads(left: bool) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        batch = PadCollator(tokenizer.pad_token_id, left=left)(examples)
        if left:
            labels, keep = batch.pop("labels"), batch.pop("logits_to_keep")
            out = model(**batch, logits_to_keep=keep)
            assert out.logits.shape[1] == len(keep) < batch["input_ids"].shape[1]
            loss = answer_loss(out, labels)
        else:
            loss = model(**batch).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return loss.item(), grads

    right_loss, right_grads = loss_and_grads(False)
    left_loss, left_grads = loss_and_grads(True)
    assert left_loss == pytest.approx(right_loss, abs=1e-5)
    assert len(left_grads) == len(right_grads) > 0
    for a, b in zip(left_grads, right_grads, strict=True):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_answer_loss_divides_by_the_accumulated_token_count() -> None:
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[-100, -100, 1, 2], [-100, -100, -100, 4]])
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 5), labels[:, 2:].reshape(-1), reduction="none"
    )
    wanted = per_token[labels[:, 2:].reshape(-1) != -100]
    assert float(answer_loss({"logits": logits}, labels)) == pytest.approx(
        float(wanted.mean()), rel=1e-6
    )
    # With gradient accumulation the Trainer counts the tokens of all micro-batches.
    assert float(answer_loss({"logits": logits}, labels, torch.tensor(6))) == pytest.approx(
        float(wanted.sum() / 6), rel=1e-6
    )


def test_recurrent_models_keep_right_padding() -> None:
    from mashup.models import LinearAttnConfig, LinearAttnForCausalLM

    model = LinearAttnForCausalLM(LinearAttnConfig(vocab_size=32, d_model=16, n_heads=2))
    assert not reads_left_padded(model)


@pytest.mark.parametrize(
    "precision,trained_in", [("bf16", torch.bfloat16), ("auto", torch.float32)]
)
def test_precision_sets_the_training_arithmetic_on_cpu(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision, trained_in
) -> None:
    from transformers import TrainerCallback

    from mashup.train.trainer import train_model

    monkeypatch.setenv("MASHUP_DEVICE", "cpu")
    seen: set[torch.dtype] = set()
    seen_in_validation: set[torch.dtype] = set()

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            layer = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))

            def record(module, inputs, output) -> None:  # noqa: ANN001
                (seen if module.training else seen_in_validation).add(output.dtype)

            layer.register_forward_hook(record)

    cfg = TrainConfig(
        base=tiny["base"],
        data=tiny["train"],
        val=tiny["val"],
        out=tmp_path / "run",
        steps=3,
        precision=precision,
        **TINY_LORA,
    )
    result = train_model(cfg, callbacks=[Spy()])
    assert seen == {trained_in}
    assert seen_in_validation == {torch.float32}  # validation scores as mashup eval does
    assert result.steps == 3 and result.final_loss is not None
    # "auto" leaves the fingerprint of runs trained before precision was a choice alone.
    assert ("precision" in cfg.fingerprint()) == (precision != "auto")
