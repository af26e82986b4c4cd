"""Based / ReBased linear-attention language models (pure PyTorch; flash-linear-attention on CUDA).

Importing this package registers ``LinearAttnConfig`` / ``LinearAttnForCausalLM`` with
transformers' ``AutoConfig`` and ``AutoModelForCausalLM`` (model_type ``mashup_linear_attn``).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from mashup.models.feature_maps import KERNELS, make_feature_map
from mashup.models.hf_cache import output_cache
from mashup.models.modeling import (
    LAYER_KINDS,
    MODEL_TYPE,
    LinearAttnConfig,
    LinearAttnForCausalLM,
    LinearAttnModel,
)
from mashup.models.ops import (
    chunked_linear_attention,
    linear_attention,
    parallel_linear_attention,
    recurrent_linear_attention,
)
from mashup.models.state import RecurrentState


def _register() -> None:
    # exist_ok: re-importing (e.g. importlib.reload in tests) must not fail.
    AutoConfig.register(MODEL_TYPE, LinearAttnConfig, exist_ok=True)
    AutoModel.register(LinearAttnConfig, LinearAttnModel, exist_ok=True)
    AutoModelForCausalLM.register(LinearAttnConfig, LinearAttnForCausalLM, exist_ok=True)


_register()

__all__ = [
    "KERNELS",
    "LAYER_KINDS",
    "LinearAttnConfig",
    "LinearAttnForCausalLM",
    "LinearAttnModel",
    "RecurrentState",
    "chunked_linear_attention",
    "linear_attention",
    "make_feature_map",
    "output_cache",
    "parallel_linear_attention",
    "recurrent_linear_attention",
]
