"""The ImageNet normalisation every cion backbone input uses (RGB in [0, 1], per channel):
``(x - IMAGENET_MEAN) / IMAGENET_STD``. The one place these numbers are written."""
from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
