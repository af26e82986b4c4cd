"""Tiny recurrent models of every supported family, saved as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

VOCAB = 64


def build(family: str, seed: int = 0):
    from transformers import Mamba2Config, Mamba2ForCausalLM, RwkvConfig, RwkvForCausalLM

    from mashup.models import LinearAttnConfig, LinearAttnForCausalLM

    torch.manual_seed(seed)
    if family == "mashup_linear_attn":
        config = LinearAttnConfig(
            vocab_size=VOCAB, d_model=32, n_heads=2, feature_dim=8, kernel="rebased",
            layers=["conv", "linear_attn", "linear_attn"], mlp=True,
        )  # fmt: skip
        model = LinearAttnForCausalLM(config)
    elif family == "mamba2":
        config = Mamba2Config(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16,
            expand=2, n_groups=1, state_size=8, chunk_size=8, conv_kernel=4,
        )  # fmt: skip
        model = Mamba2ForCausalLM(config)
    elif family == "rwkv":
        config = RwkvConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
            intermediate_size=64, context_length=256,
        )  # fmt: skip
        model = RwkvForCausalLM(config)
    else:
        raise ValueError(family)
    return model.eval()


FAMILIES = ["mashup_linear_attn", "mamba2", "rwkv"]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recurrent")
    dirs = {}
    for family in FAMILIES:
        path = root / family
        build(family).save_pretrained(path)
        dirs[family] = path
    other = root / "mashup_other"
    build("mashup_linear_attn", seed=1).save_pretrained(other)
    dirs["mashup_other"] = other
    return dirs


@pytest.fixture(scope="session")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ReBased LM with a word-level tokenizer (words w0 … w59)."""
    from tests.factories import make_tokenizer

    path = tmp_path_factory.mktemp("text_model")
    build("mashup_linear_attn", seed=3).save_pretrained(path)
    make_tokenizer(path, vocab_size=VOCAB)
    return path


def words(seed: int, n: int = 30) -> str:
    generator = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(0, VOCAB - 4, (n,), generator=generator))
