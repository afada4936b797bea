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

from cion.errors import CionError
from cion.fileio import atomic_write
from cion.models.checkpoint import save_backbone  # noqa: F401  (re-exported for the trainer)
from cion.pretrain.checkpoint import rng_state, set_rng_state  # noqa: F401

FORMAT = "cion-finetune-1"


def save_state(state: dict, path: str | Path) -> Path:
    state = dict(state, format=FORMAT)
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise CionError(f"{path}: cannot read the checkpoint ({err}). Fix: delete it to start "
                        "over, or pass another --out") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CionError(f"{path}: not a cion fine-tuning checkpoint. Fix: use another --out")
    return state


def save_model(model: torch.nn.Module, path: str | Path, metadata: dict) -> Path:
    """The whole network's state dict as safetensors (metadata values as strings)."""
    return save_backbone(model, path, metadata)
