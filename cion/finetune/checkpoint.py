"""Fine-tuning checkpoints (exact resume) and exported weights.

``checkpoint.pt`` (the ``last`` state) holds tensors and plain containers only, written
atomically by ``torch.save`` and read with ``torch.load(weights_only=True)``: model, optimiser,
gradient scaler, sampler position, every rank's RNG states, the mode's own state (Cluster
Contrast: this epoch's pseudo-labels and the cluster memory), the evaluations so far and the
best one. Weights for use outside training are safetensors files:

* ``backbone.safetensors``: the backbone alone, the key layout of a pre-training backbone
  (``cion evaluate --model``, ``cion extract``, ``--checkpoint`` / ``--source-checkpoint`` of
  another fine-tuning run);
* ``model.safetensors``: the whole fine-tuned network (neck, MGN branches and heads, GeM);
* ``best.safetensors``: the whole network at the best evaluated mAP.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cion.models.checkpoint import save_backbone
from cion.training import state as _state
from cion.training.state import rng_state, set_rng_state  # noqa: F401  (re-exported for the trainer)

FORMAT = "cion-finetune-1"


def save_state(state: dict, path: str | Path) -> Path:
    return _state.save_state(state, path, FORMAT)


def load_state(path: str | Path) -> dict:
    return _state.load_state(path, FORMAT, "fine-tuning")


def save_model(model: torch.nn.Module, path: str | Path, metadata: dict) -> Path:
    """The whole network's state dict as safetensors (metadata values as strings)."""
    return save_backbone(model, path, metadata)
