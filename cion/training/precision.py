"""The arithmetic a trainer runs in: ``auto`` = bf16 on GPUs that have it, fp16 (with a gradient
scaler) on older GPUs, fp32 on CPU."""
from __future__ import annotations

import torch

from cion.errors import CionError


def resolve_precision(precision: str, device: torch.device, fix: str = "use precision bf16 or "
                      "fp32 on CPU") -> str:
    """``precision`` (auto | fp32 | bf16 | fp16) made concrete for ``device``; fp16 off a GPU is a
    one-line error ending in ``Fix: {fix}``."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise CionError("precision fp16 needs a CUDA GPU (its gradient scaler is GPU-only). "
                        f"Fix: {fix}")
    return precision
