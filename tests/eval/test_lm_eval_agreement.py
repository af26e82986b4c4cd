"""Our scores against lm-evaluation-harness's own HFLM loglikelihood on arc_easy-format items."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import yaml

from mashup.data import MCItem, format_choice, format_prompt
from mashup.eval import evaluate_items, load_model
from tests.factories import make_tiny_llama

lm_eval = pytest.importorskip("lm_eval")


def _arc_easy_config() -> dict:
    path = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    return yaml.safe_load(path.read_text())


def _lm_eval_requests(item: MCItem) -> tuple[str, list[str]]:
    """Context and continuations exactly as lm-eval's arc_easy task renders them."""
    from lm_eval.utils import apply_template

    config = _arc_easy_config()
    labels = [chr(ord("A") + i) for i in range(len(item.choices))]
    doc = {
        "question": item.question,
        "choices": {"text": item.choices, "label": labels},
        "answerKey": labels[item.answer],
    }
    context = apply_template(config["doc_to_text"], doc)
    choices = ast.literal_eval(apply_template(config["doc_to_choice"], doc))
    delimiter = config.get("target_delimiter", " ")
    return context, [delimiter + c for c in choices]


ITEMS = [
    MCItem("w10 w11 w12", ["w5", "w6 w7", "w8 w9 w10"], 2),
    MCItem("w20 w21", ["w30 w31", "w32"], 0),
    MCItem("w40", ["w41", "w42", "w43 w44", "w45"], 1),
    MCItem("w1 w2 w3 w4", ["w50 w51 w52", "w53"], 1),
    MCItem("w33 w34 w35", ["w36", "w37 w38"], 0),
]


def _compare(model_dir: Path, items: list[MCItem]) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_model(model_dir)
    ours = evaluate_items(model, tokenizer, items, batch_size=8)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu")
    acc, acc_norm = [], []
    for index, (item, our_item) in enumerate(zip(items, ours.per_item, strict=True)):
        context, continuations = _lm_eval_requests(item)
        assert context == format_prompt(item)
        assert continuations == [format_choice(c) for c in item.choices]
        requests = [
            Instance("loglikelihood", {}, (context, cont), j, ("arc_easy", index, 1))
            for j, cont in enumerate(continuations)
        ]
        lls = np.array([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)])
        assert our_item.loglikelihoods == pytest.approx(lls.tolist(), abs=1e-3)
        # lm-eval's multiple_choice process_results: argmax, and argmax per character.
        acc.append(float(np.argmax(lls) == item.answer))
        acc_norm.append(
            float(np.argmax(lls / np.array([len(c) for c in item.choices])) == item.answer)
        )
    assert ours.acc == pytest.approx(np.mean(acc))
    assert ours.acc_norm == pytest.approx(np.mean(acc_norm))


def test_matches_lm_eval_hflm_on_tiny_model(tmp_path: Path) -> None:
    _compare(make_tiny_llama(tmp_path / "m", seed=4, vocab_size=64), ITEMS)


@pytest.mark.slow
def test_matches_lm_eval_hflm_on_smollm2_arc_easy() -> None:
    from mashup.data import load_items
    from mashup.data.assets import ensure_benchmark, ensure_smollm2

    _compare(ensure_smollm2(), load_items(ensure_benchmark("arc_easy", "val"), limit=10))
