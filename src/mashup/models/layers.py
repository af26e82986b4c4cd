"""Sequence mixers and the pre-norm residual block.

Every mixer has the same interface:

    y, new_state = mixer(x, state=None, mask=None)     # x [B, T, D]; state: dict of tensors
    state = mixer.init_state(batch_size, device)       # the state of having read nothing

``mask`` [B, T] marks real tokens (1) and padding (0); padded tokens leave the state untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from mashup.models.feature_maps import make_feature_map
from mashup.models.ops import linear_attention

LayerState = dict[str, torch.Tensor]


class ShortConvolution(nn.Module):
    """Gated causal depthwise convolution (Based/zoology "BaseConv"): out(conv(x) ⊙ gate(x)).

    State: ``buffer`` [B, D, k-1], the last k-1 inputs, so decoding one token needs only it.
    """

    kind = "conv"

    def __init__(self, d_model: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, bias=True)
        self.gate = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> LayerState:
        d_model = self.conv.in_channels
        weight = self.conv.weight
        buffer = torch.zeros(
            batch_size,
            d_model,
            self.kernel_size - 1,
            device=device or weight.device,
            dtype=weight.dtype,
        )
        return {"buffer": buffer}

    def forward(
        self, x: torch.Tensor, state: LayerState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LayerState]:
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        # Prepending the buffer makes a "valid" convolution causal and exactly resumable.
        full = torch.cat([state["buffer"].to(x.dtype), x.transpose(1, 2)], dim=-1)
        mixed = self.conv(full).transpose(1, 2)
        new_buffer = full[..., full.shape[-1] - (self.kernel_size - 1) :]
        return self.out_proj(mixed * self.gate(x)), {"buffer": new_buffer}


class LinearAttention(nn.Module):
    """Normalised causal linear attention with a Based/ReBased feature map.

    Q and K are projected to ``feature_dim`` per head, V to ``d_model / n_heads`` per head.
    State: ``S`` [B, H, F', Dv] and ``z`` [B, H, F'] (float32), F' = the feature map's size.
    """

    kind = "linear_attn"

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        feature_dim: int,
        kernel: str,
        mode: str = "auto",
        chunk_size: int = 64,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.feature_dim = feature_dim
        self.head_dim = d_model // n_heads
        self.mode = mode
        self.chunk_size = chunk_size
        self.eps = eps
        self.q_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.feature_map_q = make_feature_map(kernel, feature_dim)
        self.feature_map_k = make_feature_map(kernel, feature_dim)

    @property
    def expanded_dim(self) -> int:
        return self.feature_map_q.expanded_dim

    def init_state(self, batch_size: int, device: torch.device | None = None) -> LayerState:
        device = device or self.q_proj.weight.device
        shape = (batch_size, self.n_heads, self.expanded_dim)
        return {
            "S": torch.zeros(*shape, self.head_dim, device=device, dtype=torch.float32),
            "z": torch.zeros(*shape, device=device, dtype=torch.float32),
        }

    def forward(
        self, x: torch.Tensor, state: LayerState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LayerState]:
        batch, length, d_model = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.feature_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_heads, self.feature_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        q, k = self.feature_map_q(q), self.feature_map_k(k)
        if mask is not None:
            # A zero key feature adds nothing to S or z: padding is skipped exactly.
            k = k * mask[:, None, :, None].to(k.dtype)
        initial = (state["S"], state["z"]) if state is not None else None
        out, (s, z) = linear_attention(
            q, k, v, initial, mode=self.mode, chunk_size=self.chunk_size, eps=self.eps
        )
        out = out.transpose(1, 2).reshape(batch, length, d_model)
        return self.out_proj(out), {"S": s, "z": z}


class SoftmaxAttention(nn.Module):
    """Causal softmax attention, optionally restricted to a sliding window of ``window`` tokens.

    No positional encoding: position information comes from the short convolutions.
    State: ``k``, ``v`` [B, H, T', Dh] (all past tokens, or the last window-1 with a window).
    """

    def __init__(self, d_model: int, n_heads: int, window: int | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.window = window
        self.kind = "swa" if window is not None else "attn"
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> LayerState:
        weight = self.qkv.weight
        empty = torch.zeros(
            batch_size,
            self.n_heads,
            0,
            self.head_dim,
            device=device or weight.device,
            dtype=weight.dtype,
        )
        return {"k": empty, "v": empty.clone()}

    def forward(
        self, x: torch.Tensor, state: LayerState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LayerState]:
        batch, length, d_model = x.shape
        q, k, v = (
            t.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=-1)
        )
        if state is not None and state["k"].shape[2] > 0:
            k = torch.cat([state["k"].to(k.dtype), k], dim=2)
            v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        past = k.shape[2] - length
        query_pos = torch.arange(past, past + length, device=x.device).unsqueeze(1)
        key_pos = torch.arange(past + length, device=x.device).unsqueeze(0)
        allowed = key_pos <= query_pos
        if self.window is not None:
            allowed = allowed & (key_pos > query_pos - self.window)
        allowed = allowed.expand(batch, 1, length, past + length)
        if mask is not None:
            # Padding keys of this call are hidden; a query always sees itself (no empty rows).
            key_mask = torch.ones(batch, past + length, dtype=torch.bool, device=x.device)
            key_mask[:, past:] = mask.bool()
            allowed = allowed & (key_mask[:, None, None, :] | (key_pos == query_pos))
        out = functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = out.transpose(1, 2).reshape(batch, length, d_model)
        if self.window is not None:
            keep = max(self.window - 1, 0)
            k, v = (
                k[:, :, k.shape[2] - min(keep, k.shape[2]) :],
                v[:, :, v.shape[2] - min(keep, v.shape[2]) :],
            )
        return self.out_proj(out), {"k": k, "v": v}


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ratio * d_model)
        self.fc2 = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(functional.gelu(self.fc1(x)))


Mixer = ShortConvolution | LinearAttention | SoftmaxAttention


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x)) when enabled."""

    def __init__(self, mixer: Mixer, d_model: int, norm_eps: float, mlp_ratio: int | None) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(d_model, eps=norm_eps) if mlp_ratio else None
        self.mlp = MLP(d_model, mlp_ratio) if mlp_ratio else None

    @property
    def kind(self) -> str:
        return self.mixer.kind

    def init_state(self, batch_size: int, device: torch.device | None = None) -> LayerState:
        return self.mixer.init_state(batch_size, device)

    def forward(
        self, x: torch.Tensor, state: LayerState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LayerState]:
        mixed, new_state = self.mixer(self.norm(x), state, mask)
        x = x + mixed
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, new_state
