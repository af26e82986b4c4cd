"""How each recurrent model family reads, continues from and composes its state.

A state is a flat ``{name: tensor}`` dict (what a safetensors file holds) with batch size 1 on
every tensor; a family converts it to and from the model's own cache object.

* ``mashup_linear_attn`` (our Based / ReBased models): ``RecurrentState.to_tensors()`` names,
  ``layers.<i>.linear_attn.S|z`` and ``layers.<i>.conv.buffer``. Nothing decays: the state after
  A then B is exactly S_A + S_B in each layer that sees the same inputs.
* ``mamba2`` (transformers ``Mamba2ForCausalLM``): ``layers.<i>.mamba2.conv`` [1, C, k] and
  ``layers.<i>.mamba2.ssm`` [1, H, P, N], plus ``layers.<i>.mamba2.decay`` [1, H], the product of
  the per-step decays exp(Δt·A) over the context, so that a state can be composed after another:
  S_AB = decay_B · S_A + S_B (exact for the first layer; deeper layers see different inputs).
* ``rwkv`` (transformers ``RwkvForCausalLM``, RWKV-4): per layer the two token-shift vectors and
  the WKV numerator / denominator, which transformers stores scaled by exp(-max) with the max
  alongside. Mixing works on the true values exp(max)·num, in a shared log scale to stay finite.
  The decay per step is exp(w), w = -exp(time_decay), independent of the input, so A's state
  after B's T tokens is exp(w·T)·S_A (stored as ``layers.<i>.rwkv.log_decay`` = w·T).

Convolution buffers and token shifts hold the last few inputs, not a sum: the ``decay`` mix
keeps the last state's, the weighted mixes average them (an approximation, documented in the
README). None of these models uses positions, so a state continues at any position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mashup.errors import MashupError

FAMILIES = ("mashup_linear_attn", "mamba2", "rwkv")


def family_of(model: Any) -> str:
    """The state family of a loaded model; MashupError for models without a usable state."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "mashup_linear_attn":
        return "mashup_linear_attn"
    if model_type == "mamba2":
        return "mamba2"
    if model_type == "rwkv":
        return "rwkv"
    raise MashupError(
        f"model type {model_type!r} has no recurrent state that mashup can capture",
        hint="use a mashup Based/ReBased model, Mamba2ForCausalLM or RwkvForCausalLM",
    )


@dataclass
class Run:
    """Logits of a forward pass and the state after it (flat tensors, batch dimension kept)."""

    logits: torch.Tensor
    state: dict[str, torch.Tensor]


# --- mashup linear attention ---------------------------------------------------------------


def _mashup_run(model: Any, ids: torch.Tensor, state: dict[str, torch.Tensor] | None) -> Run:
    from mashup.models import RecurrentState
    from mashup.models.hf_cache import output_cache

    past = None
    if state is not None:
        past = RecurrentState.from_tensors(state)
        past = past.repeat_interleave(ids.shape[0]) if past.batch_size != ids.shape[0] else past
    out = model(ids, cache=past, use_cache=True)
    return Run(out.logits, output_cache(out).to_tensors())


# --- Mamba-2 --------------------------------------------------------------------------------


def _mamba2_cache(model: Any, state: dict[str, torch.Tensor], batch: int) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        conv = state[f"layers.{i}.mamba2.conv"].expand(batch, -1, -1).contiguous()
        ssm = state[f"layers.{i}.mamba2.ssm"].expand(batch, -1, -1, -1).contiguous()
        layer.lazy_initialization(
            conv_states=conv, recurrent_states=ssm, conv_kernel_size=conv.shape[-1]
        )
        layer.conv_states[0].copy_(conv)
        layer.recurrent_states[0].copy_(ssm.to(layer.recurrent_states[0].dtype))
        layer.has_previous_state[0] = True
    return cache


def _mamba2_decays(model: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], list[Any]]:
    """Forward hooks recording, per layer, Π exp(Δt·A) over the tokens of this call."""
    decays: list[torch.Tensor] = []
    handles = []
    for mixer in (block.mixer for block in model.backbone.layers):

        def hook(module: Any, args: tuple, output: torch.Tensor, mixer: Any = mixer) -> None:
            dt = output[..., -mixer.num_heads :].float()  # in_proj's last split is Δt
            dt = torch.nn.functional.softplus(dt + mixer.dt_bias.float())
            low, high = mixer.time_step_limit
            dt = dt.clamp(min=low, max=high)
            a = -torch.exp(mixer.A_log.float())
            decays.append(torch.exp((dt * a).sum(dim=1)))  # [B, H]

        handles.append(mixer.in_proj.register_forward_hook(hook))
    return decays, handles


def _mamba2_run(model: Any, ids: torch.Tensor, state: dict[str, torch.Tensor] | None) -> Run:
    from mashup.models.hf_cache import cache_argument

    batch = ids.shape[0]
    if state is not None:
        cache = _mamba2_cache(model, state, batch)
    else:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
    decays, handles = _mamba2_decays(model, ids)
    try:
        out = model(ids, use_cache=True, **{cache_argument(model): cache})
    finally:
        for handle in handles:
            handle.remove()
    flat: dict[str, torch.Tensor] = {}
    for i in range(len(cache.layers)):
        flat[f"layers.{i}.mamba2.conv"] = cache.get_conv_state(i).clone()
        flat[f"layers.{i}.mamba2.ssm"] = cache.get_recurrent_state(i).float().clone()
        decay = decays[i]
        if state is not None:  # the decay of the whole history, previous state included
            decay = decay * state[f"layers.{i}.mamba2.decay"]
        flat[f"layers.{i}.mamba2.decay"] = decay
    return Run(out.logits, flat)


# --- RWKV -----------------------------------------------------------------------------------

RWKV_PARTS = ("ffn_shift", "att_shift", "num", "den", "max")


def _rwkv_run(model: Any, ids: torch.Tensor, state: dict[str, torch.Tensor] | None) -> Run:
    layers = model.config.num_hidden_layers
    batch = ids.shape[0]
    cache = None
    if state is not None:
        cache = [
            torch.stack([state[f"layers.{i}.rwkv.{part}"] for i in range(layers)], dim=-1)
            .expand(batch, -1, -1)
            .clone()  # transformers updates the state in place
            for part in RWKV_PARTS
        ]
    out = model(ids, state=cache, use_cache=True)
    flat: dict[str, torch.Tensor] = {}
    for i, block in enumerate(model.rwkv.blocks):
        for part, tensor in zip(RWKV_PARTS, out.state, strict=True):
            flat[f"layers.{i}.rwkv.{part}"] = tensor[:, :, i].clone()
        w = -torch.exp(block.attention.time_decay.float())
        previous = state[f"layers.{i}.rwkv.log_decay"] if state is not None else 0.0
        flat[f"layers.{i}.rwkv.log_decay"] = (w * ids.shape[1] + previous).expand(batch, -1)
    return Run(out.logits, flat)


_RUNNERS = {"mashup_linear_attn": _mashup_run, "mamba2": _mamba2_run, "rwkv": _rwkv_run}


@torch.no_grad()
def run(model: Any, ids: torch.Tensor, state: dict[str, torch.Tensor] | None = None) -> Run:
    """Read ``ids`` [B, T] starting from ``state`` (batch 1 is broadcast); logits and new state."""
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise MashupError(f"expected input ids of shape [batch, tokens > 0], got {list(ids.shape)}")
    return _RUNNERS[family_of(model)](model, ids, state)


# --- composition ----------------------------------------------------------------------------


def _rwkv_true_scale(
    states: list[dict[str, torch.Tensor]],
    weights: list[float],
    layer: int,
    shifts: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Σ wᵢ·exp(maxᵢ + shiftᵢ)·(numᵢ, denᵢ), written back as (num, den, max) in one scale."""
    maxes = [s[f"layers.{layer}.rwkv.max"].float() for s in states]
    if shifts is not None:
        maxes = [m + shift for m, shift in zip(maxes, shifts, strict=True)]
    common = torch.stack(maxes).amax(dim=0)
    num = sum(
        w * s[f"layers.{layer}.rwkv.num"].float() * torch.exp(m - common)
        for w, s, m in zip(weights, states, maxes, strict=True)
    )
    den = sum(
        w * s[f"layers.{layer}.rwkv.den"].float() * torch.exp(m - common)
        for w, s, m in zip(weights, states, maxes, strict=True)
    )
    return {"num": num, "den": den, "max": common}


def combine(
    family: str, states: list[dict[str, torch.Tensor]], weights: list[float], mode: str
) -> dict[str, torch.Tensor]:
    """Weighted sum of states (``weighted``), or ``decay``: read in order, each earlier state
    decayed by the later contexts' cumulative decay; buffers and shifts come from the last."""
    names = list(states[0])
    out: dict[str, torch.Tensor] = {}
    if mode == "decay":
        if family == "mashup_linear_attn":  # nothing decays: the plain sum
            mode = "weighted"
            weights = [1.0] * len(states)
        elif family == "mamba2":
            for name in names:
                if name.endswith(".ssm"):
                    prefix = name[: -len("ssm")]
                    total = states[0][name].float()
                    for later in states[1:]:
                        decay = later[prefix + "decay"].float()[..., None, None]
                        total = decay * total + later[name].float()
                    out[name] = total
                elif name.endswith(".decay"):
                    out[name] = torch.stack([s[name].float() for s in states]).prod(dim=0)
                else:  # conv buffers: the last context's tokens
                    out[name] = states[-1][name].clone()
            return out
        elif family == "rwkv":
            layers = sorted({int(n.split(".")[1]) for n in names})
            for i in layers:
                # Earlier states decay by the log-decays of every later state.
                shifts = []
                for j in range(len(states)):
                    later = [s[f"layers.{i}.rwkv.log_decay"].float() for s in states[j + 1 :]]
                    shifts.append(sum(later) if later else torch.zeros(1))
                mixed = _rwkv_true_scale(states, [1.0] * len(states), i, shifts)
                for part in ("num", "den", "max"):
                    out[f"layers.{i}.rwkv.{part}"] = mixed[part]
                for part in ("ffn_shift", "att_shift"):
                    out[f"layers.{i}.rwkv.{part}"] = states[-1][f"layers.{i}.rwkv.{part}"].clone()
                out[f"layers.{i}.rwkv.log_decay"] = sum(
                    s[f"layers.{i}.rwkv.log_decay"].float() for s in states
                )
            return out
    if family == "rwkv":
        layers = sorted({int(n.split(".")[1]) for n in names})
        for i in layers:
            mixed = _rwkv_true_scale(states, weights, i)
            for part in ("num", "den", "max"):
                out[f"layers.{i}.rwkv.{part}"] = mixed[part]
            for part in ("ffn_shift", "att_shift", "log_decay"):
                name = f"layers.{i}.rwkv.{part}"
                out[name] = sum(w * s[name].float() for w, s in zip(weights, states, strict=True))
        return out
    for name in names:
        if family == "mamba2" and name.endswith(".decay"):
            # A weighted mix is not a reading of any one context; keep the geometric mean.
            stacked = torch.stack([s[name].float().clamp_min(1e-30).log() for s in states])
            out[name] = torch.exp(
                sum(w * x for w, x in zip(weights, stacked, strict=True)) / max(sum(weights), 1e-12)
            )
            continue
        out[name] = sum(w * s[name].float() for w, s in zip(weights, states, strict=True))
    return out


def mixable_vector(
    family: str, state: dict[str, torch.Tensor], layers: list[int] | None = None
) -> torch.Tensor:
    """The state's memory (S; ssm; true-scale WKV numerator), each layer scaled to unit norm
    and concatenated: what similarity search compares."""
    parts: list[torch.Tensor] = []
    by_layer: dict[int, list[torch.Tensor]] = {}
    for name, tensor in state.items():
        index = int(name.split(".")[1])
        if layers is not None and index not in layers:
            continue
        if (
            family == "mashup_linear_attn"
            and name.endswith(".S")
            or family == "mamba2"
            and name.endswith(".ssm")
        ):
            by_layer.setdefault(index, []).append(tensor.float().flatten())
        elif family == "rwkv" and name.endswith(".num"):
            den = state[name[: -len("num")] + "den"].float()
            by_layer.setdefault(index, []).append((tensor.float() / den.clamp_min(1e-30)).flatten())
    for index in sorted(by_layer):
        vector = torch.cat(by_layer[index])
        parts.append(vector / vector.norm().clamp_min(1e-12))
    if not parts:
        raise MashupError(
            f"no state layers to compare (layers={layers})",
            hint="choose layer indices that hold a linear-attention or SSM state",
        )
    return torch.cat(parts)
