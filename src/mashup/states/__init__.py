"""State Soup: capture, store, retrieve, mix and continue from recurrent-model states.

Works for mashup's Based / ReBased models and transformers' Mamba-2 and RWKV models; see
:mod:`mashup.states.families` for what a state holds per family and how states compose.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MIX_MODES",
    "CapturedState",
    "SearchHit",
    "StatefulLM",
    "capture_state",
    "check_compatible",
    "continue_from",
    "eval_with_state",
    "generate",
    "load_recurrent_model",
    "load_state",
    "mix_states",
    "model_fingerprint",
    "resolve_state",
    "save_state",
    "search_states",
]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports mashup.states.commands, which must not pull in torch.
    if name in __all__:
        from mashup.states import core

        return getattr(core, name)
    raise AttributeError(f"module 'mashup.states' has no attribute {name!r}")
