"""Files written so that a crash leaves the old version or the new one, never half of either, and files read in
bounded memory: the one writer and the one bounded reader of the code base."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, private: bool = False) -> Path:
    """Write ``data`` to a temp file of its own beside ``path`` (concurrent writers do not meet), fsync it, rename it
    over ``path``; 0600 if ``private``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_bounded(path: Path, limit: int, what: str, error: type[Exception] = OSError) -> bytes:
    """The bytes of ``path``, if it is a file of at most ``limit`` bytes; else ``error`` saying which ``what`` was
    missing or too large. Size first, then read: outside bytes never cost more memory than ``limit``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no {what} at {path}")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than any {what} ({limit} bytes)")
    return data
