"""Writing files safely: a temporary file beside the target, renamed over it once complete."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def temp_beside(path: str | Path) -> tuple[int, Path]:
    """``(fd, path)`` of a new file ``.NAME.<random>.part`` beside ``path``, open for writing.

    Created with mode 0666 less the user's umask, as any tool's output (``tempfile.mkstemp``
    would give 0600, and the rename would keep it).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(tmp, flags, 0o666), tmp
