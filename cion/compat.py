"""Make ``import torchvision`` (and so ``import timm``) work next to a CPU-only torch.

Some environments pair a CPU build of torch with a torchvision wheel built for CUDA. Its compiled
operators cannot load, and ``import torchvision`` then fails with
``RuntimeError: operator torchvision::nms does not exist`` while registering fake kernels for
``nms``/``qnms``. When (and only when) that happens, this module defines placeholder schemas for
those two operators and imports torchvision again. Transforms and models then work; the detection
operators themselves (and ``torchvision.io`` JPEG decoding) do not, and cion never uses them.

Import this module before torchvision or timm::

    import cion.compat  # noqa: F401  (must precede torchvision / timm)

Where torchvision imports normally it does nothing.
"""
from __future__ import annotations

import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the placeholder library alive for the process lifetime
TORCHVISION_SHIMMED = False


def _forget_torchvision() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> bool:
    """Import torchvision, registering placeholder ops if its compiled ops are missing.

    Returns True when the placeholders were needed.
    """
    global _library, TORCHVISION_SHIMMED
    try:
        import torchvision  # noqa: F401

        return TORCHVISION_SHIMMED
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    _forget_torchvision()
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS.values():
            _library.define(schema)
    import torchvision  # noqa: F401,F811

    TORCHVISION_SHIMMED = True
    return True


ensure_torchvision()
