"""Training augmentation of the supervised baseline (paper Sec. 4.1; docs/finetuning.md), on whole batches.

Input: uint8 images already resized to (H, W), shape (B, H, W, 3) (decoded once by
:func:`decode_images`). Steps, in the TransReID / strong-baseline order:

1. random horizontal flip with probability ``flip_p`` (0.5);
2. zero padding of ``pad`` pixels (10 at 256x128; by default scaled with the image height,
   ``round(10 * H / 256)``) and a random (H, W) crop of the padded image (the padding is black
   before normalisation, like torchvision's ``Pad`` on a PIL image);
3. ImageNet normalisation, ``(x / 255 - mean) / std``, exactly as
   :func:`cion.evaluation.retrieval.embed_paths`;
4. random erasing with probability ``erasing_p`` (0.5) of one rectangle of area
   U(0.02, 0.4) x H x W and aspect ratio h/w log-uniform in (0.3, 3.33) (up to 10 tries for a
   rectangle that fits, else the image is kept), filled with ``erasing_fill``: ``"random"``
   (default) = per-pixel N(0, 1) noise in normalised units (timm's "pixel" mode, used by
   TransReID), or ``"zeros"`` = 0 in normalised units, i.e. the ImageNet mean colour.

All randomness comes from a numpy ``Generator``; every step is one vectorised tensor operation
over the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cion.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cion.errors import CionError

_TRIES = 10


def decode_images(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 array of the images at ``paths``, RGB, resized (bilinear) to
    ``size`` = (H, W) (:func:`cion.handcrafted.load_images`). Holds the whole set in memory:
    fine for the small sets this is used on (N x H x W x 3 bytes, 1.25 GB for Market's 12,936
    training images at 256x128)."""
    from cion.handcrafted import load_images

    return load_images(paths, size)


def normalize(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) array/tensor -> float32 (B, 3, H, W), ImageNet-normalised."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class TrainAugment:
    """Flip, pad + crop, normalise, random erasing (see the module docstring).

    ``pad=None`` means ``round(10 * H / 256)`` pixels (10 at 256x128, 2 at 64x32).
    """
    flip_p: float = 0.5
    pad: int | None = None
    erasing_p: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_aspect: tuple[float, float] = (0.3, 3.33)
    erasing_fill: str = "random"

    def __post_init__(self):
        for name in ("flip_p", "erasing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CionError(f"TrainAugment.{name} must be a probability in [0, 1], "
                                f"got {getattr(self, name)}")
        if self.pad is not None and self.pad < 0:
            raise CionError(f"TrainAugment.pad must be >= 0 pixels (or None = scaled), "
                            f"got {self.pad}")
        lo, hi = self.erasing_area
        if not 0.0 < lo <= hi < 1.0:
            raise CionError(f"TrainAugment.erasing_area must be 0 < min <= max < 1 (fractions of "
                            f"the image), got {self.erasing_area}")
        lo, hi = self.erasing_aspect
        if not 0.0 < lo <= hi:
            raise CionError(f"TrainAugment.erasing_aspect must be 0 < min <= max, "
                            f"got {self.erasing_aspect}")
        if self.erasing_fill not in ("random", "zeros"):
            raise CionError(f"TrainAugment.erasing_fill must be 'random' or 'zeros', got "
                            f"'{self.erasing_fill}'")

    def pad_pixels(self, height: int) -> int:
        return int(self.pad) if self.pad is not None else int(round(10 * height / 256))

    def __call__(self, images, rng: np.random.Generator) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), augmented and normalised."""
        images = torch.as_tensor(np.asarray(images))
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise CionError(f"TrainAugment: expected uint8 images (B, H, W, 3), got "
                            f"{images.dtype} {tuple(images.shape)}")
        b, h, w, _ = images.shape
        x = images.permute(0, 3, 1, 2)                              # (B, 3, H, W) uint8
        flip = torch.from_numpy(rng.random(b) < self.flip_p)
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        p = self.pad_pixels(h)
        if p > 0:
            x = torch.nn.functional.pad(x, (p, p, p, p))            # zeros = black
            dy = torch.from_numpy(rng.integers(0, 2 * p + 1, b))
            dx = torch.from_numpy(rng.integers(0, 2 * p + 1, b))
            rows = (dy[:, None] + torch.arange(h))[:, None, :, None]   # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w))[:, None, None, :]   # (B, 1, 1, W)
            x = x[torch.arange(b).view(b, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
        x = normalize(x.permute(0, 2, 3, 1))
        return self._erase(x, rng)

    def _erase(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        area = rng.uniform(*self.erasing_area, (b, _TRIES)) * h * w
        aspect = np.exp(rng.uniform(math.log(self.erasing_aspect[0]),
                                    math.log(self.erasing_aspect[1]), (b, _TRIES)))
        eh = np.round(np.sqrt(area * aspect)).astype(np.int64)
        ew = np.round(np.sqrt(area / aspect)).astype(np.int64)
        fits = (eh >= 1) & (ew >= 1) & (eh < h) & (ew < w)
        first = fits.argmax(1)                                       # first try that fits
        eh, ew = eh[np.arange(b), first], ew[np.arange(b), first]
        erase = (rng.random(b) < self.erasing_p) & fits.any(1)
        y0 = (rng.random(b) * (h - eh + 1)).astype(np.int64)
        x0 = (rng.random(b) * (w - ew + 1)).astype(np.int64)
        ys, xs = np.arange(h), np.arange(w)
        mask = (((ys >= y0[:, None]) & (ys < (y0 + eh)[:, None]))[:, :, None]
                & ((xs >= x0[:, None]) & (xs < (x0 + ew)[:, None]))[:, None, :]
                & erase[:, None, None])                              # (B, H, W)
        if not mask.any():
            return x
        idx = torch.from_numpy(np.flatnonzero(erase))
        mask = torch.from_numpy(mask[erase])[:, None]                # (E, 1, H, W)
        if self.erasing_fill == "random":
            fill = torch.from_numpy(rng.standard_normal((len(idx), c, h, w), dtype=np.float32))
        else:
            fill = torch.zeros(())
        x = x.clone()
        x[idx] = torch.where(mask, fill, x[idx])
        return x
