"""Fingerprints read from config, safetensors headers, tokenizer and adapter files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save, save_file

from mashup.errors import MashupError
from mashup.zoo import Fingerprint, fingerprint_path
from mashup.zoo.safetensors_header import read_header
from tests.factories import make_tiny_llama, make_tokenizer
from tests.zoo.conftest import write_state


def test_model_fingerprint_reads_config_headers_and_tokenizer(tiny: dict[str, Path]) -> None:
    fp = fingerprint_path(tiny["base"])
    assert fp.kind == "model"
    assert fp.architecture == "LlamaForCausalLM"
    assert fp.vocab_size == 64
    assert fp.dtype == "float32"
    assert fp.tokenizer_hash is not None and len(fp.tokenizer_hash) == 64
    assert fp.adapter is None
    with safe_open(tiny["base"] / "model.safetensors", "np") as f:
        expected = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    assert fp.param_shapes == expected
    assert fp.param_shapes["model.embed_tokens.weight"] == [64, 16]
    assert len(fp.digest) == 16
    assert fp.meta["model_type"] == "llama"


def test_sharded_copy_agrees_with_single_file(tiny: dict[str, Path]) -> None:
    assert len(list(tiny["sharded"].glob("model-*.safetensors"))) >= 2
    single, sharded = fingerprint_path(tiny["base"]), fingerprint_path(tiny["sharded"])
    assert sharded.param_shapes == single.param_shapes
    assert sharded.digest == single.digest
    assert single.mismatches(sharded) == []


def test_finetune_of_same_base_is_compatible(tiny: dict[str, Path]) -> None:
    base, finetune = fingerprint_path(tiny["base"]), fingerprint_path(tiny["finetune"])
    assert base.digest == finetune.digest
    assert base.mismatches(finetune) == []


def test_mismatched_vocab_and_hidden_size_are_explained(tiny: dict[str, Path]) -> None:
    base = fingerprint_path(tiny["base"])
    big_vocab = fingerprint_path(tiny["big_vocab"])
    reasons = base.mismatches(big_vocab)
    assert "different vocab size: 64 vs 128" in reasons
    assert "shape of model.embed_tokens.weight: [64, 16] vs [128, 16]" in reasons
    assert any(r.startswith("different tokenizer") for r in reasons)
    assert base.digest != big_vocab.digest

    wide = fingerprint_path(tiny["wide"])
    reasons = base.mismatches(wide)
    assert "shape of model.embed_tokens.weight: [64, 16] vs [64, 32]" in reasons
    assert not any("vocab" in r for r in reasons)
    # Many tensors differ: the list stays readable instead of naming every one.
    assert any(r.startswith("... and ") for r in reasons)
    assert "shape of lm_head.weight: [64, 32] vs [64, 16]" in wide.mismatches(base)


def test_tokenizer_hash_tracks_the_vocabulary(tiny: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other_tokenizer"
    shutil.copytree(tiny["base"], other)
    make_tokenizer(other, 64, extra="x")  # same size, different tokens
    reasons = fingerprint_path(tiny["base"]).mismatches(fingerprint_path(other))
    assert len(reasons) == 1 and reasons[0].startswith("different tokenizer: hash ")

    # Padding/truncation settings are not part of the vocabulary: the hash ignores them.
    same = tmp_path / "same_tokenizer"
    shutil.copytree(tiny["base"], same)
    data = json.loads((same / "tokenizer.json").read_text())
    data["padding"] = {"strategy": "BatchLongest", "pad_id": 3, "pad_token": "<pad>"}
    (same / "tokenizer.json").write_text(json.dumps(data))
    assert fingerprint_path(same).tokenizer_hash == fingerprint_path(tiny["base"]).tokenizer_hash

    # No tokenizer at all: no hash, and no mismatch reported for it.
    bare = tmp_path / "bare"
    shutil.copytree(tiny["base"], bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    assert fingerprint_path(bare).tokenizer_hash is None
    assert fingerprint_path(bare).mismatches(fingerprint_path(other)) == []


def test_dtype_is_recorded_but_does_not_block_merging(tmp_path: Path) -> None:
    import torch

    fp32 = fingerprint_path(make_tiny_llama(tmp_path / "fp32", seed=0))
    bf16 = fingerprint_path(make_tiny_llama(tmp_path / "bf16", seed=0, dtype=torch.bfloat16))
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16")
    assert fp32.digest == bf16.digest and fp32.mismatches(bf16) == []


def test_adapter_fingerprint_fields(tiny: dict[str, Path]) -> None:
    fp = fingerprint_path(tiny["lora"])
    assert fp.kind == "adapter"
    assert fp.architecture == "LORA"
    assert fp.base_model == str(tiny["base"])
    assert fp.adapter == {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "use_dora": False,
        "use_rslora": False,
        "bias": "none",
    }
    a_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    b_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert fp.param_shapes[a_name] == [4, 16]
    assert fp.param_shapes[b_name] == [16, 4]
    assert len(fp.param_shapes) == 2 * 2 * 2  # layers x targets x (A, B)
    assert fp.meta["card"]["library_name"] == "peft"

    reasons = fp.mismatches(fingerprint_path(tiny["lora_r8"]))
    assert "different adapter r: 4 vs 8" in reasons
    assert "different adapter target_modules: ['q_proj', 'v_proj'] vs " in "".join(reasons)
    assert fingerprint_path(tiny["base"]).mismatches(fp) == ["different kind: model vs adapter"]


def test_adapter_base_model_mismatch(tiny: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "lora_other_base"
    shutil.copytree(tiny["lora"], moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-model"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    reasons = fingerprint_path(tiny["lora"]).mismatches(fingerprint_path(moved))
    assert reasons == [f"different adapter base model: {tiny['base']} vs someone/other-model"]


def test_model_card_front_matter_goes_into_meta(tiny: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "carded"
    shutil.copytree(tiny["finetune"], model)
    (model / "README.md").write_text(
        "---\nbase_model: org/tiny-base\ntags: [arc, test]\ndatasets:\n- allenai/ai2_arc\n---\n"
        "# A tiny fine-tune\n"
    )
    fp = fingerprint_path(model)
    assert fp.meta["card"] == {
        "base_model": "org/tiny-base",
        "tags": ["arc", "test"],
        "datasets": ["allenai/ai2_arc"],
    }
    assert fp.base_model == "org/tiny-base"  # config.json does not say, the card does
    # A card that is not valid YAML does not block registration.
    (model / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
    assert "card" not in fingerprint_path(model).meta


def test_state_fingerprint_reads_safetensors_metadata(tmp_path: Path) -> None:
    fp = fingerprint_path(write_state(tmp_path / "soup.safetensors", model_digest="d1"))
    assert fp.kind == "state"
    assert fp.architecture == "LinearAttnForCausalLM"
    assert fp.base_model == "d1"
    assert fp.param_shapes["layers.1.S"] == [1, 2, 16, 32]
    assert fp.meta["state"]["task"] == "arc_easy"
    assert fp.meta["state"]["n_tokens"] == 128
    other = fingerprint_path(write_state(tmp_path / "other.safetensors", model_digest="d2"))
    assert fp.mismatches(other) == ["different state's model: d1 vs d2"]


def test_bare_safetensors_file_is_not_a_state(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(MashupError, match="not a mashup state"):
        fingerprint_path(path)


def test_fingerprint_round_trips_through_dict(tiny: dict[str, Path]) -> None:
    fp = fingerprint_path(tiny["lora"])
    again = Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict())))
    assert again == fp
    assert again.compute_digest() == fp.digest


_DTYPES = st.sampled_from([np.float32, np.float16, np.int64, np.int8, np.float64])
_TENSORS = st.dictionaries(
    st.text("abcdefgh._", min_size=1, max_size=12),
    st.tuples(st.lists(st.integers(0, 5), max_size=3), _DTYPES),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(tensors=_TENSORS, cut=st.floats(0, 1, exclude_max=True))
def test_header_reader_agrees_with_safetensors_and_catches_truncation(
    tmp_path_factory: pytest.TempPathFactory, tensors: dict, cut: float
) -> None:
    arrays = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in tensors.items()}
    data = save(arrays, metadata={"k": "v"})
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(data)
    header = read_header(path)
    assert header.metadata == {"k": "v"}
    with safe_open(path, "np") as f:
        assert set(header.tensors) == set(f.keys())
        for name in f.keys():  # noqa: SIM118
            assert header.tensors[name].shape == list(f.get_slice(name).get_shape())
    # Cutting the file anywhere (header or data) must be caught.
    path.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(MashupError, match=r"x\.safetensors: (truncated|corrupt)"):
        read_header(path)
