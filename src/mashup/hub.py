"""The Hugging Face stack runs offline here and takes no code from the hub."""

from __future__ import annotations

import os


def stay_offline() -> None:
    """Set (unless the user did) the environment that keeps transformers off the network.

    Since transformers 5, ``from_pretrained`` swaps layers for compiled kernels fetched from the
    hub by default: remote code, a download, and an error on any machine whose ``kernels``
    package is of another version. Models here load as the plain PyTorch code they ship with.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
