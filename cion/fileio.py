"""Atomic file writes: readers never see a half-written manifest, checkpoint or stats file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file keeps ``path``'s suffix (some writers pick the format from it) and is
    removed if ``write`` fails, leaving any previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def ensure_writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, before any slow work, that directory ``path`` exists or can be created and that
    files can be written in it; returns it as a ``Path``.

    Raises :class:`cion.errors.CionError` (one line, naming ``option`` and the fix) otherwise.
    Creates the directory (and parents) when missing: a directory that a run would create
    anyway, never a stray one, since callers call this only once their inputs are valid.
    """
    from cion.errors import CionError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CionError(f"{option} {path} is a file, not a directory. Fix: give a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cion-write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CionError(f"{option} {path} is not writable ({reason}). Fix: choose a directory "
                        "you can write to") from None
    return path


def ensure_writable_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Like :func:`ensure_writable_dir` for an output FILE: its directory must be writable and
    ``path`` must not be a directory."""
    from cion.errors import CionError

    path = Path(path)
    if path.is_dir():
        raise CionError(f"{option} {path} is a directory, not a file. Fix: give a file path")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), option)
    return path
