"""The Hugging Face stack runs offline here and takes no code from the hub; a base model is a
local Hugging Face model folder."""

from __future__ import annotations

import os
from pathlib import Path

from mashup.errors import MashupError


def check_base(base: Path) -> None:
    """Refuse a base model folder that is not there, or is not a model's (before anything is
    written). Every stage that takes ``--base`` checks it here, so each says the same."""
    hint = "run mashup data prepare, or give a Hugging Face model directory with --base"
    if not base.exists():
        raise MashupError(f"{base}: base model folder does not exist", hint=hint)
    if not (base / "config.json").is_file():
        raise MashupError(
            f"{base}: not a Hugging Face model folder (config.json missing)", hint=hint
        )


def stay_offline() -> None:
    """Set (unless the user did) the environment that keeps transformers off the network.

    Since transformers 5, ``from_pretrained`` swaps layers for compiled kernels fetched from the
    hub by default: remote code, a download, and an error on any machine whose ``kernels``
    package is of another version. Models here load as the plain PyTorch code they ship with.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
