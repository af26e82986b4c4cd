"""Causal normalised linear attention in three equivalent forms.

Given feature-mapped queries and keys φ(q), φ(k) ``[B, H, T, F]`` and values ``[B, H, T, D]``,
every form computes

    o_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + eps)
    S_t = S_0 + Σ_{s≤t} φ(k_s) v_sᵀ,   z_t = z_0 + Σ_{s≤t} φ(k_s)

and returns the final state ``(S_T, z_T)`` so that a later call can continue exactly where this
one stopped. The forms differ only in cost:

- ``parallel``: masked quadratic attention, O(T²F) time and a T×T score matrix;
- ``chunked``: quadratic inside chunks of C tokens, state passing between them, O(T·C·F + T·F·D);
- ``recurrent``: one token at a time from the state, O(F·D) per token (decoding).

Everything is computed in float32 (the state is a long sum) and cast back to the input dtype.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

import torch
from torch.nn import functional

from mashup.errors import MashupError

LinearAttnState = tuple[torch.Tensor, torch.Tensor]  # (S [B,H,F,D], z [B,H,F])
AttnMode = Literal["parallel", "chunked", "recurrent", "auto"]
ATTN_MODES: tuple[str, ...] = ("parallel", "chunked", "recurrent", "auto")
DEFAULT_EPS = 1e-6


def empty_state(q: torch.Tensor, v: torch.Tensor) -> LinearAttnState:
    """The zero state: reading nothing."""
    batch, heads, _, features = q.shape
    s = torch.zeros(batch, heads, features, v.shape[-1], device=q.device, dtype=torch.float32)
    z = torch.zeros(batch, heads, features, device=q.device, dtype=torch.float32)
    return s, z


def _prepare(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state: LinearAttnState | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    s0, z0 = initial_state if initial_state is not None else empty_state(q, v)
    return q.float(), k.float(), v.float(), s0.float(), z0.float()


def parallel_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: LinearAttnState | None = None,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, LinearAttnState]:
    """Masked quadratic form; materialises the T×T score matrix (reference and short inputs)."""
    dtype = v.dtype
    q, k, v, s0, z0 = _prepare(q, k, v, initial_state)
    length = q.shape[-2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)
    numerator = scores @ v + q @ s0
    denominator = scores.sum(-1) + (q * z0.unsqueeze(-2)).sum(-1)
    out = numerator / (denominator + eps).unsqueeze(-1)
    final = (s0 + k.transpose(-1, -2) @ v, z0 + k.sum(-2))
    return out.to(dtype), final


def _exclusive_scan(
    increments: torch.Tensor, start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States seen by each chunk (start + increments of earlier chunks, along dim 2) and the
    final state. A loop over chunks: N small adds beat torch.cumsum over a strided dim ~10×."""
    before = []
    running = start
    for index in range(increments.shape[2]):
        before.append(running)
        running = running + increments[:, :, index]
    return torch.stack(before, dim=2), running


def chunked_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: LinearAttnState | None = None,
    eps: float = DEFAULT_EPS,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, LinearAttnState]:
    """Quadratic within chunks, states between them; the largest score block is C×C."""
    dtype = v.dtype
    q, k, v, s0, z0 = _prepare(q, k, v, initial_state)
    batch, heads, length, features = q.shape
    dim_v = v.shape[-1]
    n_chunks = max(1, math.ceil(length / chunk_size))
    pad = n_chunks * chunk_size - length
    if pad:
        # Zero keys add nothing to the state; outputs at padded positions are dropped.
        q, k, v = (functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    qc = q.view(batch, heads, n_chunks, chunk_size, features)
    kc = k.view(batch, heads, n_chunks, chunk_size, features)
    vc = v.view(batch, heads, n_chunks, chunk_size, dim_v)

    chunk_kv = kc.transpose(-1, -2) @ vc  # [B,H,N,F,D]: what each chunk adds to S
    chunk_k = kc.sum(-2)  # [B,H,N,F]: what each chunk adds to z
    s_before, s_final = _exclusive_scan(chunk_kv, s0)
    z_before, z_final = _exclusive_scan(chunk_k, z0)

    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    scores = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B,H,N,C,C]
    numerator = scores @ vc + qc @ s_before
    denominator = scores.sum(-1) + (qc * z_before.unsqueeze(-2)).sum(-1)
    out = numerator / (denominator + eps).unsqueeze(-1)
    out = out.reshape(batch, heads, n_chunks * chunk_size, dim_v)[:, :, :length]
    return out.to(dtype), (s_final, z_final)


def linear_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: LinearAttnState,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, LinearAttnState]:
    """One token: q, k ``[B, H, F]``, v ``[B, H, D]`` -> output ``[B, H, D]`` and the new state."""
    s, z = state
    s = s + k.float().unsqueeze(-1) * v.float().unsqueeze(-2)
    z = z + k.float()
    qf = q.float()
    numerator = torch.einsum("bhf,bhfd->bhd", qf, s)
    denominator = (qf * z).sum(-1, keepdim=True)
    return (numerator / (denominator + eps)).to(v.dtype), (s, z)


def recurrent_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: LinearAttnState | None = None,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, LinearAttnState]:
    """Token-by-token form: constant memory and O(F·D) work per token."""
    state = initial_state if initial_state is not None else empty_state(q, v)
    state = (state[0].float(), state[1].float())
    outputs = []
    for t in range(q.shape[-2]):
        out, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, eps)
        outputs.append(out)
    if not outputs:
        return v.new_zeros(v.shape), state
    return torch.stack(outputs, dim=2), state


def fla_available() -> bool:
    """flash-linear-attention's Triton kernels can be used (installed; CUDA inputs only)."""
    return importlib.util.find_spec("fla") is not None


def _fla_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: LinearAttnState | None,
    eps: float,
) -> tuple[torch.Tensor, LinearAttnState]:
    """Chunked form on flash-linear-attention's kernel.

    fla's own normaliser ignores an initial z, so the denominator is carried as an extra value
    column of ones: the kernel then returns [φ(q)ᵀS, φ(q)ᵀz] and the state [S | z] in one pass.
    """
    from fla.ops.linear_attn import chunk_linear_attn

    dtype = v.dtype
    s0, z0 = initial_state if initial_state is not None else empty_state(q, v)
    v_ext = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    h0 = torch.cat([s0, z0.unsqueeze(-1)], dim=-1).float()
    q, k = q.to(v.dtype), k.to(v.dtype)
    # fla expects [B, T, H, F] layouts.
    out, h = chunk_linear_attn(
        q.transpose(1, 2).contiguous(),
        k.transpose(1, 2).contiguous(),
        v_ext.transpose(1, 2).contiguous(),
        scale=1.0,
        initial_state=h0,
        output_final_state=True,
        normalize=False,
    )
    out = out.transpose(1, 2).float()
    result = out[..., :-1] / (out[..., -1:] + eps)
    return result.to(dtype), (h[..., :-1].float(), h[..., -1].float())


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: LinearAttnState | None = None,
    *,
    mode: str = "auto",
    chunk_size: int = 64,
    eps: float = DEFAULT_EPS,
    use_fla: bool = True,
) -> tuple[torch.Tensor, LinearAttnState]:
    """Dispatch to one form. ``auto``: one token -> recurrent, ≤ one chunk -> parallel, else chunked
    (on CUDA with flash-linear-attention installed, its chunked kernel)."""
    length = q.shape[-2]
    if mode == "auto":
        if length == 1:
            mode = "recurrent"
        elif length <= chunk_size:
            mode = "parallel"
        else:
            mode = "chunked"
    if mode == "recurrent":
        return recurrent_linear_attention(q, k, v, initial_state, eps)
    if mode == "parallel":
        return parallel_linear_attention(q, k, v, initial_state, eps)
    if mode == "chunked":
        # Kept to key dims ≤ 256 (ReBased at F = 16, not Based's 273), the head sizes fla's
        # kernels are built for; fla reads [B, T, H, K] and refuses T < H as a layout mistake.
        fla_fits = q.shape[-1] <= 256 and length >= q.shape[1]
        if use_fla and q.is_cuda and fla_fits and fla_available():
            return _fla_chunked(q, k, v, initial_state, eps)
        return chunked_linear_attention(q, k, v, initial_state, eps, chunk_size)
    raise MashupError(
        f"attn_mode: unknown mode {mode!r}", hint=f"use one of {', '.join(ATTN_MODES)}"
    )
