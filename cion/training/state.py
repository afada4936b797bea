"""Training state for exact resume (``checkpoint.pt``) and the RNG states it carries, shared by
the pre-training and fine-tuning trainers.

``checkpoint.pt`` holds only tensors and plain Python containers, written by ``torch.save``
and read back with ``torch.load(weights_only=True)`` (no pickled classes, no argparse
Namespace). It is written atomically (temporary file + rename), so a run killed while
writing keeps its previous checkpoint. Each trainer stamps its own ``format`` and refuses the
other's file.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from cion.errors import CionError
from cion.fileio import atomic_write


def save_state(state: dict, path: str | Path, fmt: str) -> Path:
    """Write the training ``state`` (tensors and plain containers) to ``path`` atomically,
    stamped ``format = fmt``."""
    state = dict(state, format=fmt)
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path, fmt: str, what: str) -> dict:
    """Read a ``checkpoint.pt`` written by :func:`save_state` with the same ``fmt`` (weights_only,
    no code run); ``what`` names the kind of run in the error (e.g. "pre-training")."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise CionError(f"{path}: cannot read the checkpoint ({err}). Fix: delete it to start "
                        "over, or pass another --out") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CionError(f"{path}: not a cion {what} checkpoint. Fix: use another --out")
    return state


def rng_state() -> dict:
    """Global RNG states (torch CPU/CUDA, numpy, Python) as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
