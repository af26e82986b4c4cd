"""Continuing from a captured state equals reading the whole sequence, for every family;
composition rules (sum, decay) are exact where the math says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mashup.states import capture_state, continue_from, families, load_recurrent_model, mix_states
from tests.states.conftest import FAMILIES, VOCAB


def ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("split", [1, 5, 13])
def test_continuing_equals_reading_everything(
    model_dirs: dict[str, Path], family: str, split: int
) -> None:
    model, _, fp = load_recurrent_model(model_dirs[family])
    sequence = ids(20, seed=split)
    whole = families.run(model, sequence).logits
    state = capture_state(model, sequence[:, :split], fingerprint=fp)
    rest = continue_from(model, state, sequence[:, split:]).logits
    assert torch.allclose(rest, whole[:, split:], atol=1e-4), (rest - whole[:, split:]).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_state_broadcasts_over_a_batch(model_dirs: dict[str, Path], family: str) -> None:
    model, _, fp = load_recurrent_model(model_dirs[family])
    state = capture_state(model, ids(7, 0), fingerprint=fp)
    batch = torch.cat([ids(4, 1), ids(4, 2)])
    together = continue_from(model, state, batch).logits
    alone = continue_from(model, state, batch[1:]).logits
    assert torch.allclose(together[1:], alone, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_does_not_change_the_state_it_started_from(
    model_dirs: dict[str, Path], family: str
) -> None:
    model, _, fp = load_recurrent_model(model_dirs[family])
    state = capture_state(model, ids(6, 0), fingerprint=fp)
    before = {n: t.clone() for n, t in state.tensors.items()}
    continue_from(model, state, ids(5, 1))
    assert all(torch.equal(before[n], state.tensors[n]) for n in before)


def without_memory(state, family: str):
    """The state with its recurrent memory emptied but its token buffers kept."""
    tensors = dict(state.tensors)
    for name, tensor in state.tensors.items():
        if family == "mamba2" and name.endswith(".ssm"):
            tensors[name] = torch.zeros_like(tensor)
        elif family == "mamba2" and name.endswith(".decay"):
            tensors[name] = torch.ones_like(tensor)
        elif family == "rwkv" and name.endswith((".num", ".den", ".log_decay")):
            tensors[name] = torch.zeros_like(tensor)
        elif family == "rwkv" and name.endswith(".max"):
            tensors[name] = torch.full_like(tensor, -1e30)
    return type(state)(**{**state.__dict__, "tensors": tensors})


@pytest.mark.parametrize(
    ("family", "memory"), [("mamba2", "layers.0.mamba2.ssm"), ("rwkv", "layers.0.rwkv.num")]
)
def test_decay_composition_is_exact_in_the_first_layer(
    model_dirs: dict[str, Path], family: str, memory: str
) -> None:
    """S(A then B) = decay_B · S_A + S_B, where S_B is B read with A's token buffers (so layer
    0 sees the same inputs) but an empty memory: the recurrence is linear in its start."""
    model, _, fp = load_recurrent_model(model_dirs[family])
    a, b = ids(9, 0), ids(11, 1)
    state_a = capture_state(model, a, fingerprint=fp)
    state_b = capture_state(model, b, fingerprint=fp, initial=without_memory(state_a, family))
    both = capture_state(model, torch.cat([a, b], dim=1), fingerprint=fp)
    composed = mix_states([state_a, state_b], mode="decay")

    def true_scale(state) -> torch.Tensor:
        if family == "rwkv":  # transformers keeps num scaled by exp(-max)
            return state.tensors[memory] * torch.exp(state.tensors["layers.0.rwkv.max"])
        return state.tensors[memory]

    got, want = true_scale(composed), true_scale(both)
    assert ((got - want).abs().max() / want.abs().max()) < 1e-5
    # Without the decay the plain sum is measurably wrong: the test can fail.
    plain = mix_states([state_a, state_b], mode="sum")
    assert ((true_scale(plain) - want).abs().max() / want.abs().max()) > 1e-3


def test_sum_is_exact_for_one_undecayed_linear_attention_layer() -> None:
    from mashup.models import LinearAttnConfig, LinearAttnForCausalLM

    torch.manual_seed(0)
    config = LinearAttnConfig(vocab_size=VOCAB, d_model=32, n_heads=2, feature_dim=8,
                              layers=["linear_attn"])  # fmt: skip
    model = LinearAttnForCausalLM(config).eval()
    fp = {"digest": "one-layer", "architecture": "LinearAttnForCausalLM"}
    a, b = ids(9, 0), ids(11, 1)
    state_a = capture_state(model, a, fingerprint=fp)
    state_b = capture_state(model, b, fingerprint=fp)
    both = capture_state(model, torch.cat([a, b], dim=1), fingerprint=fp)
    summed = mix_states([state_a, state_b], mode="sum")
    for name in ("layers.0.linear_attn.S", "layers.0.linear_attn.z"):
        assert torch.allclose(summed.tensors[name], both.tensors[name], atol=1e-5)
    assert summed.n_tokens == 20


@pytest.mark.parametrize("family", FAMILIES)
def test_generating_from_a_state_equals_generating_from_the_context(
    model_dirs: dict[str, Path], family: str
) -> None:
    from mashup.states import generate

    model, _, fp = load_recurrent_model(model_dirs[family])
    context, prompt = ids(12, 0), ids(3, 1)
    from_state = generate(model, capture_state(model, context, fingerprint=fp), prompt, 8)
    from_text = generate(model, None, torch.cat([context, prompt], dim=1), 8)
    assert from_state == from_text and len(from_state) == 8
