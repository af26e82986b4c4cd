"""File permissions for outputs written through temporary paths.

Outputs are written to a temporary file or folder and renamed into place. ``mkstemp`` and
``mkdtemp`` create them private (0600 / 0700), and safetensors 0.8 writes its files 0600 too, so
without this a zoo on shared storage would hold files only their writer can read. Outputs get
the permissions an ordinary ``open()`` / ``mkdir()`` would have given them under the umask.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (see ``write_text``)."""
    write_text(path, json.dumps(data))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a uniquely named temporary file and a rename, so that
    readers never see half a file and processes may race on one path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        share_like_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
