"""Merging: mergekit-compatible methods, streamed to disk, plus LoRA-aware adapter merges.

``MergeConfig`` reads the mergekit YAML subset (see :mod:`mashup.merge.config`), ``merge`` writes
a Hugging Face model directory or a PEFT adapter directory, and ``METHODS`` is the registry of
merge methods (see :mod:`mashup.merge.methods` for their semantics and deviations). Names are
imported on first use, so ``mashup --help`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mashup.merge.config import MergeConfig
    from mashup.merge.engine import MergeResult, merge
    from mashup.merge.methods import METHODS

__all__ = ["METHODS", "MergeConfig", "MergeResult", "merge"]
_HOMES = {
    "MergeConfig": "mashup.merge.config",
    "MergeResult": "mashup.merge.engine",
    "merge": "mashup.merge.engine",
    "METHODS": "mashup.merge.methods",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mashup.merge' has no attribute {name!r}")
