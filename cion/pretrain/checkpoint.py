"""Pre-training's ``checkpoint.pt`` (exact resume): :mod:`cion.training.state` with the
pre-training format. The exported teacher backbone (``backbone.safetensors``) is written by
:func:`cion.models.checkpoint.save_backbone`, the one writer of backbone files.
"""
from __future__ import annotations

from pathlib import Path

from cion.training.state import load_state, rng_state, save_state, set_rng_state  # noqa: F401

FORMAT = "cion-pretrain-1"


def save_training_state(state: dict, path: str | Path) -> Path:
    """Write the training ``state`` (tensors and plain containers) to ``path`` atomically."""
    return save_state(state, path, FORMAT)


def load_training_state(path: str | Path) -> dict:
    """Read a ``checkpoint.pt`` written by :func:`save_training_state` (weights_only, no code run)."""
    return load_state(path, FORMAT, "pre-training")
