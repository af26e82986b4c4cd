"""LinearAttnForCausalLM: transformers integration, state continuation, generation, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mashup.errors import MashupError
from mashup.models import LinearAttnConfig, LinearAttnForCausalLM, RecurrentState
from mashup.models.hf_cache import OUTPUT_CACHE_FIELD, output_cache

VOCAB = 97


def _model(seed: int = 0, **overrides) -> LinearAttnForCausalLM:
    torch.manual_seed(seed)
    options = dict(vocab_size=VOCAB, d_model=32, n_heads=2, feature_dim=8, chunk_size=16)
    options.update(overrides)
    model = LinearAttnForCausalLM(LinearAttnConfig(**options)).eval()
    # Non-trivial feature-map affine parameters (they start at γ=1, β=0).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".gamma", ".beta")):
                param.add_(torch.randn_like(param) * 0.3)
    return model


def _ids(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "layers,kernel",
    [
        (["conv", "linear_attn"], "rebased"),
        (["conv", "linear_attn", "conv", "linear_attn"], "based"),
        (["conv", "linear_attn", "swa", "attn"], "rebased"),
    ],
)
def test_continuing_from_a_state_equals_the_whole_sequence(layers: list[str], kernel: str) -> None:
    model = _model(layers=layers, kernel=kernel, mlp=True, window=8)
    ids = _ids(45)
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :19], use_cache=True)
        rest = model(ids[:, 19:], cache=output_cache(first), use_cache=True)
        # Token by token from the captured state (the decoding path).
        state = output_cache(first)
        steps = []
        for t in range(19, 45):
            out = model(ids[:, t : t + 1], cache=state, use_cache=True)
            state = output_cache(out)
            steps.append(out.logits)
    assert torch.allclose(rest.logits, full[:, 19:], atol=1e-5)
    assert torch.allclose(torch.cat(steps, dim=1), full[:, 19:], atol=1e-5)
    assert output_cache(rest).n_tokens == 45 and state.n_tokens == 45


@pytest.mark.parametrize("mode", ["parallel", "chunked", "recurrent"])
def test_attn_modes_give_the_same_logits(mode: str) -> None:
    reference = _model(attn_mode="parallel")
    model = _model(attn_mode=mode)
    ids = _ids(40)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)


def test_sum_of_states_equals_concatenation_for_one_linear_attention_layer() -> None:
    """Undecayed linear attention: S and z are sums over tokens, so states add (one layer)."""
    model = _model(layers=["linear_attn"])
    a, b = _ids(30, seed=2), _ids(23, seed=3)
    with torch.no_grad():
        state_a = output_cache(model(a))
        state_b = output_cache(model(b))
        state_ab = output_cache(model(torch.cat([a, b], dim=1)))
    mixed = state_a + state_b
    for name in ("S", "z"):
        assert torch.allclose(mixed[0][name], state_ab[0][name], rtol=1e-5, atol=1e-5)
    assert mixed.n_tokens == 53
    # And the continuation from the summed state equals reading the concatenation.
    query = _ids(5, seed=4)
    with torch.no_grad():
        from_mix = model(query, cache=mixed).logits
        from_concat = model(torch.cat([a, b, query], dim=1)).logits[:, -5:]
    assert torch.allclose(from_mix, from_concat, atol=1e-5)


def test_empty_state_equals_no_state_and_batch_one_state_broadcasts() -> None:
    model = _model()
    ids = _ids(12, batch=3)
    with torch.no_grad():
        plain = model(ids).logits
        from_empty = model(ids, cache=model.init_state(1)).logits
        prefix = _ids(7, batch=1, seed=9)
        state = output_cache(model(prefix))
        shared = model(ids, cache=state).logits
        each = torch.cat([model(torch.cat([prefix, row[None]], 1)).logits[:, 7:] for row in ids])
    assert torch.allclose(plain, from_empty, atol=1e-6)
    assert torch.allclose(shared, each, atol=1e-5)


def test_padding_mask_skips_pad_tokens() -> None:
    model = _model(layers=["conv", "linear_attn", "attn"])
    ids = _ids(10, batch=1)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], dim=1).long()
    with torch.no_grad():
        plain = model(ids).logits
        left_padded = model(padded, attention_mask=mask).logits[:, 3:]
    assert torch.allclose(plain, left_padded, atol=1e-5)


@pytest.mark.parametrize("layers", [["conv", "linear_attn"], ["conv", "linear_attn", "swa"]])
def test_greedy_generate_equals_stepwise_argmax_of_full_forward(layers: list[str]) -> None:
    model = _model(layers=layers, window=4)
    prompt = _ids(9, batch=2)
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    sequence = prompt
    with torch.no_grad():
        for _ in range(12):
            next_token = model(sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize(
    "layers", [["conv", "linear_attn"], ["conv", "linear_attn", "swa", "attn"]]
)
def test_generate_continues_from_a_given_state(layers: list[str]) -> None:
    model = _model(layers=layers, window=4)
    prefix, prompt = _ids(15, batch=1, seed=5), _ids(4, batch=1, seed=6)
    with torch.no_grad():
        state = output_cache(model(prefix))
    # generate takes the cache under the name its release gives the output field.
    from_state = model.generate(
        prompt, max_new_tokens=6, do_sample=False, **{OUTPUT_CACHE_FIELD: state.clone()}
    )
    whole = model.generate(torch.cat([prefix, prompt], 1), max_new_tokens=6, do_sample=False)
    assert torch.equal(from_state[:, -6:], whole[:, -6:])


def test_the_old_cache_name_still_works_and_two_names_are_refused() -> None:
    model = _model(layers=["conv", "linear_attn"])
    prefix, ids = _ids(7), _ids(5, seed=2)
    with torch.no_grad():
        state = output_cache(model(prefix))
        new_name = model(ids, cache=state.clone()).logits
        old_name = model(ids, past_key_values=state.clone()).logits
        assert torch.equal(new_name, old_name)
        with pytest.raises(MashupError, match="two names"):
            model(ids, cache=state, past_key_values=state)


def test_decoding_memory_is_constant_for_recurrent_layers() -> None:
    model = _model(layers=["conv", "linear_attn"])
    with torch.no_grad():
        short = output_cache(model(_ids(5)))
        long = output_cache(model(_ids(300)))
    assert short.nbytes() == long.nbytes()


def test_save_pretrained_round_trip_and_auto_classes(tmp_path: Path) -> None:
    model = _model(layers=["conv", "linear_attn", "swa"], kernel="based", mlp=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LinearAttnConfig) and config.layers == ["conv", "linear_attn", "swa"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, LinearAttnForCausalLM)
    ids = _ids(20)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_tied_embeddings_round_trip(tmp_path: Path) -> None:
    model = _model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = LinearAttnForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize(
    "overrides,parameter",
    [
        (dict(feature_dim=0), "feature_dim"),
        (dict(d_model=30, n_heads=4), "n_heads"),
        (dict(kernel="softmax"), "kernel"),
        (dict(layers=["conv", "mamba"]), "layers"),
        (dict(layers=[]), "layers"),
        (dict(attn_mode="fast"), "attn_mode"),
        (dict(conv_kernel=-1), "conv_kernel"),
    ],
)
def test_invalid_config_names_the_parameter(overrides: dict, parameter: str) -> None:
    with pytest.raises(MashupError) as error:
        LinearAttnConfig(**overrides)
    assert parameter in str(error.value)
    assert error.value.hint


def test_state_of_another_model_is_refused() -> None:
    model = _model(layers=["conv", "linear_attn"])
    other = _model(layers=["linear_attn"])
    with torch.no_grad():
        state = output_cache(other(_ids(5)))
        with pytest.raises(MashupError, match="layers"):
            model(_ids(5), cache=state)


def test_registered_model_type() -> None:
    config = AutoConfig.for_model("mashup_linear_attn", d_model=16, n_heads=2)
    assert isinstance(config, LinearAttnConfig)
    model = AutoModelForCausalLM.from_config(config)
    assert isinstance(model, LinearAttnForCausalLM)
    assert isinstance(model.init_state(2), RecurrentState)


def test_beam_search_with_state_cache_equals_without_cache() -> None:
    """Beam search reorders the RecurrentState rows (reorder_cache) correctly."""
    model = _model(layers=["conv", "linear_attn", "swa"], window=4)
    prompt = _ids(7)
    cached = model.generate(prompt, max_new_tokens=5, num_beams=3, do_sample=False)
    uncached = model.generate(
        prompt, max_new_tokens=5, num_beams=3, do_sample=False, use_cache=False
    )
    assert torch.equal(cached, uncached)
