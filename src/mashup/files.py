"""File permissions for outputs written through temporary paths.

Outputs are written to a temporary file or folder and renamed into place. ``mkstemp`` and
``mkdtemp`` create them private (0600 / 0700), and safetensors 0.8 writes its files 0600 too, so
without this a zoo on shared storage would hold files only their writer can read. Outputs get
the permissions an ordinary ``open()`` / ``mkdir()`` would have given them under the umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_like_umask(path: str | Path) -> Path:
    """Give ``path`` (and, for a folder, everything under it) umask-based permissions."""
    path = Path(path)
    mask = current_umask()
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        if entry.is_symlink():
            continue
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)
    return path
