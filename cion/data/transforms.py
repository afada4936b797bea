"""Multi-crop person augmentation for CION pre-training (paper Sec. 3.3 and 4.1; DINO's recipe), fast.

Per image: 2 global views (default 256x128, RandomResizedCrop scale (0.8, 1.0)) and L local
views (default 128x64, scale (0.05, 0.8)), all with aspect ratio w/h in (0.4, 0.6); horizontal
flip 0.5; colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8;
grayscale 0.2; Gaussian blur with p 1.0 (global 1), 0.1 (global 2), 0.5 (locals), sigma in
(0.1, 2.0) pixels at the reference 256x128 size (scaled with ``global_size``); solarise with
p 0.2 on global 2; ImageNet mean/std. Optional, off by default (not in DINO's set): a
white-balance jitter, each channel scaled by ``exp(U(-gain_jitter, gain_jitter))`` with
probability ``gain_p``, before the colour jitter.

Two halves (docs/gpu.md): :meth:`MultiCropAugment.crops` runs in the DataLoader workers: the
image is decoded once (JPEG draft decoding when it is much larger than needed), each crop is
cut and resized by one PIL call (``Image.resize(box=...)``) and flipped, and the result is
uint8 with one row of per-view parameters holding every other random draw;
:class:`cion.data.photometric.PhotometricAugment` then applies white-balance gain, colour
jitter + grayscale (per-view 3x3 colour matrices, batched matrix products), Gaussian blur (one
separable grouped convolution), solarise and normalisation to all views of a batch at once on
the training device (:func:`finish_views`). ``augment(img, seed)`` runs both halves on the CPU
for one image. Both are faster than the torchvision-PIL pipeline of DINO
(``benchmarks/pretrain_throughput.py``).

Randomness: every call takes a 64-bit ``seed`` (given per sample by
:class:`cion.data.sampler.IdentityBatchSampler`), so the crops of an image depend only on that
seed: identical across runs, resumes, worker counts and process counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from cion.data.photometric import (_GRAY, WIDTH_FIXED, PhotometricAugment, apply_jitter,
                                   batch_plan, blur_radius, blur_separable, draw_jitter,
                                   draw_photometric)
from cion.errors import CionError

from cion.data.imagenet import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported)


@dataclass
class MultiCropConfig:
    """Sizes are (height, width) in pixels; ratio is width / height."""
    global_size: tuple[int, int] = (256, 128)
    local_size: tuple[int, int] = (128, 64)
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.8, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.8)
    ratio: tuple[float, float] = (0.4, 0.6)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)   # global 1, global 2, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)          # pixels at 256x128
    solarize_p: float = 0.2                               # global 2 only
    gain_p: float = 0.0          # white-balance jitter (off in the paper's recipe): probability ...
    gain_jitter: float = 0.0     # ... and range: each channel x exp(U(-g, g))
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict)

    @property
    def sigma_scale(self) -> float:
        return self.global_size[0] / 256.0


def random_resized_boxes(rng: np.random.Generator, n: int, width: int, height: int,
                         scale: tuple[float, float], ratio: tuple[float, float],
                         attempts: int = 10) -> np.ndarray:
    """``n`` RandomResizedCrop boxes (x0, y0, x1, y1), torchvision's rule, vectorised.

    Up to ``attempts`` (area, ratio) draws per box; the first that fits is used, else a
    centre crop with the ratio clamped to ``ratio``. Returns (n, 4) float64 pixel boxes.
    """
    area = width * height
    target = area * rng.uniform(scale[0], scale[1], (n, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, attempts)))
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = np.argmax(ok, axis=1)
    has = ok[np.arange(n), first]
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    ux, uy = rng.random(n), rng.random(n)
    x0 = np.floor(ux * (width - w + 1))
    y0 = np.floor(uy * (height - h + 1))
    # fallback: centre crop with clamped ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    w = np.where(has, w, fw)
    h = np.where(has, h, fh)
    x0 = np.where(has, x0, (width - fw) // 2)
    y0 = np.where(has, y0, (height - fh) // 2)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


# ---- kept entry points of the per-pixel operations (see cion.data.photometric) ------------
def colour_jitter(x: torch.Tensor, rng: np.random.Generator, jitter=(0.4, 0.4, 0.2, 0.1),
                  jitter_p: float = 0.8, gray_p: float = 0.2) -> torch.Tensor:
    """Random colour jitter then random grayscale of ``n`` crops at once.

    ``x``: (n, 3, P) float pixels in [0, 1] (P = H * W). The draws and the colour algebra are
    :func:`cion.data.photometric.draw_jitter`'s (torchvision's ``ColorJitter(*jitter)``
    factors with probability ``jitter_p``, the four operations in one random order as 3x3
    colour matrices, a clamp to [0, 1] after each); grayscale (probability ``gray_p``) replaces
    the three channels by ``gray(x)``.
    """
    matrices, contrast, gray = draw_jitter(rng, x.shape[0], jitter, jitter_p, gray_p)
    m = torch.from_numpy(matrices.transpose(1, 0, 2, 3).copy())
    x = apply_jitter(x, m, torch.from_numpy(contrast.T.copy()),
                     tuple(not c.any() for c in contrast))
    if gray.any():
        g = (torch.from_numpy(_GRAY).float().view(1, 3, 1) * x).sum(1, keepdim=True)
        x = torch.where(torch.from_numpy(gray).view(-1, 1, 1), g.expand_as(x), x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with one sigma (pixels) per image, reflect pad.

    The kernel spans ``ceil(3 * max(sigma))`` pixels each side (capped by the image size).
    """
    n, c, h, w = x.shape
    half = max(1, min(int(math.ceil(3.0 * float(sigma.max()))), min(h, w) - 1))
    t = torch.arange(-half, half + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    return blur_separable(x, k / k.sum(1, keepdim=True))


class MultiCropViews(NamedTuple):
    """What a DataLoader worker makes of one image: uint8 crops and the parameter rows of
    their per-pixel augmentation (:func:`cion.data.photometric.draw_photometric`)."""
    globals_u8: torch.Tensor      # (2, Hg, Wg, 3) uint8, channels last as PIL gives them
    locals_u8: torch.Tensor       # (L, Hl, Wl, 3) uint8
    globals_params: torch.Tensor  # (2, K_g) float64
    locals_params: torch.Tensor   # (L, K_l) float64


class MultiCropAugment:
    """Multi-crop augmentation of one image, in two halves.

    * ``augment.crops(img, seed) -> MultiCropViews``: the CPU half for DataLoader workers:
      decode (JPEG draft), crop + resize + flip per view, uint8 pixels, and every other random
      draw of the image as per-view parameter rows.
    * ``augment.photometric(views, params)``: the per-pixel half
      (:class:`cion.data.photometric.PhotometricAugment`), batched, on any device.
    * ``augment(img, seed) -> (globals (2, 3, Hg, Wg), locals (L, 3, Hl, Wl))``: both halves on
      the CPU for one image, float32, normalised.

    ``img`` is a PIL image (any mode) or a path.
    """

    def __init__(self, cfg: MultiCropConfig | None = None):
        self.cfg = cfg or MultiCropConfig()
        self.photometric = PhotometricAugment(self.cfg.mean, self.cfg.std)

    def load(self, path: str) -> Image.Image:
        """RGB image; an unreadable file raises :class:`cion.data.images.BadImageError`."""
        from cion.data.images import read_rgb

        gh, gw = self.cfg.global_size
        return read_rgb(path, draft=(2 * gw, 2 * gh))  # JPEG: decode at 1/2..1/8 when much larger

    def _views(self, img: Image.Image, rng: np.random.Generator, n: int, size: tuple[int, int],
               scale: tuple[float, float], blur_p: np.ndarray,
               solarize_p: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` views of one size: uint8 pixels (n, H, W, 3) and parameter rows (n, K).

        Per view, in PIL on uint8 (C code): crop + resize in one call
        (``Image.resize(box=...)``), flip. Draws: crop boxes, flips, then
        :func:`~cion.data.photometric.draw_photometric`.
        """
        cfg = self.cfg
        h, w = size
        boxes = random_resized_boxes(rng, n, img.size[0], img.size[1], scale, cfg.ratio)
        flip = rng.random(n) < cfg.flip_p
        params = draw_photometric(rng, n, size, cfg, blur_p, solarize_p)
        pixels = np.empty((n, h, w, 3), np.uint8)
        for i, box in enumerate(boxes.tolist()):   # per crop: one C call, one copy
            c = np.asarray(img.resize((w, h), Image.BILINEAR, box=tuple(box)))
            pixels[i] = c[:, ::-1] if flip[i] else c
        return torch.from_numpy(pixels), torch.from_numpy(params)

    def crops(self, img, seed: int) -> MultiCropViews:
        """The worker half for one image; every draw is a function of ``seed`` only."""
        cfg = self.cfg
        if not isinstance(img, Image.Image):
            img = self.load(str(img))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        rng = np.random.default_rng(int(seed))
        glob, gpar = self._views(img, rng, 2, cfg.global_size, cfg.global_scale,
                                 np.array(cfg.blur_p[:2]), np.array([0.0, cfg.solarize_p]))
        L = cfg.local_crops
        if L > 0:
            loc, lpar = self._views(img, rng, L, cfg.local_size, cfg.local_scale,
                                    np.full(L, cfg.blur_p[2]), np.zeros(L))
        else:
            radius = blur_radius(cfg.local_size, cfg.blur_sigma, cfg.sigma_scale)
            loc = torch.empty(0, *cfg.local_size, 3, dtype=torch.uint8)
            lpar = torch.empty(0, WIDTH_FIXED + 2 * radius + 1, dtype=torch.float64)
        return MultiCropViews(glob, loc, gpar, lpar)

    def __call__(self, img, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.crops(img, seed)
        return self.photometric(v.globals_u8, v.globals_params), \
            self.photometric(v.locals_u8, v.locals_params)


class MultiCropDataset(torch.utils.data.Dataset):
    """Dataset over image paths, indexed by the sampler's ``(row, aug_seed, label)`` items.

    ``dataset[(row, seed, label)]`` -> ``(globals, locals, label)`` float32 views (both halves
    of the augmentation in the worker); default collation stacks them into (B, 2, 3, Hg, Wg),
    (B, L, 3, Hl, Wl) and (B,). With ``uint8=True`` the worker runs only its half and returns
    ``(globals_u8, locals_u8, globals_params, locals_params, label)``: finish the batch with
    :func:`finish_views` on the training device.
    """

    def __init__(self, paths: list[str], augment: MultiCropAugment, uint8: bool = False):
        self.paths = list(paths)
        self.augment = augment
        self.uint8 = uint8

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        row, seed, label = item
        img = self.augment.load(self.paths[row])
        if self.uint8:
            return (*self.augment.crops(img, seed), label)
        glob, loc = self.augment(img, seed)
        return glob, loc, label


def finish_views(photometric: PhotometricAugment, pixels: torch.Tensor, params: torch.Tensor,
                 device: torch.device, out_device: torch.device | None = None) -> list[torch.Tensor]:
    """The per-pixel half for a collated batch: views as a list of (B, 3, H, W) float32.

    ``pixels``: (B, V, H, W, 3) uint8 and ``params``: (B, V, K) float64, as the DataLoader
    gives them (pinned when it pins memory); both cross to ``device`` without blocking, all
    B x V views are augmented at once there, and the result goes to ``out_device`` (default
    ``device``). Each returned view is contiguous.
    """
    b, v = pixels.shape[:2]
    if v == 0:
        return []
    x = pixels.to(device, non_blocking=True).transpose(0, 1).reshape(v * b, *pixels.shape[2:])
    if device.type == "cpu":
        views = photometric(x, params.transpose(0, 1).reshape(v * b, -1))
    else:   # plan on the host copy (no device sync), compute on the device
        plan = batch_plan(params.transpose(0, 1).reshape(v * b, -1))
        p = params.to(device, non_blocking=True).transpose(0, 1).reshape(v * b, -1)
        views = photometric(x, p, plan)
    views = views.contiguous().view(v, b, 3, *pixels.shape[2:4])
    if out_device is not None and torch.device(out_device) != views.device:
        views = views.to(out_device, non_blocking=True)
    return list(views.unbind(0))


def torchvision_multicrop(cfg: MultiCropConfig | None = None):
    """The plain torchvision-PIL multi-crop pipeline of DINO (``DataAugmentationDINO``) with
    CION's person sizes, per-crop PIL transforms. Kept as the speed baseline of
    ``benchmarks/pretrain_throughput.py`` and as a distribution reference in the tests.
    Returns ``f(pil_image) -> list of 2 + L tensors``.
    """
    import cion.compat  # noqa: F401  (must precede torchvision / timm)
    from PIL import ImageFilter, ImageOps
    from torchvision import transforms as T

    cfg = cfg or MultiCropConfig()
    s = cfg.sigma_scale

    class Blur:
        def __init__(self, p):
            self.p = p

        def __call__(self, img):
            if np.random.rand() >= self.p:
                return img
            return img.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(*cfg.blur_sigma) * s))

    class Solarize:
        def __init__(self, p):
            self.p = p

        def __call__(self, img):
            return ImageOps.solarize(img) if np.random.rand() < self.p else img

    flip_color = T.Compose([
        T.RandomHorizontalFlip(p=cfg.flip_p),
        T.RandomApply([T.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
        T.RandomGrayscale(p=cfg.gray_p)])
    norm = T.Compose([T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    g1 = T.Compose([T.RandomResizedCrop(cfg.global_size, scale=cfg.global_scale, ratio=cfg.ratio,
                                        interpolation=T.InterpolationMode.BICUBIC),
                    flip_color, Blur(cfg.blur_p[0]), norm])
    g2 = T.Compose([T.RandomResizedCrop(cfg.global_size, scale=cfg.global_scale, ratio=cfg.ratio,
                                        interpolation=T.InterpolationMode.BICUBIC),
                    flip_color, Blur(cfg.blur_p[1]), Solarize(cfg.solarize_p), norm])
    loc = T.Compose([T.RandomResizedCrop(cfg.local_size, scale=cfg.local_scale, ratio=cfg.ratio,
                                         interpolation=T.InterpolationMode.BICUBIC),
                     flip_color, Blur(cfg.blur_p[2]), norm])

    def apply(img):
        return [g1(img), g2(img)] + [loc(img) for _ in range(cfg.local_crops)]

    return apply
