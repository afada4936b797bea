"""Multi-crop person augmentation for CION pre-training (SPEC section 4), fast.

Per image: 2 global views (default 256x128, RandomResizedCrop scale (0.8, 1.0)) and L local
views (default 128x64, scale (0.05, 0.8)), all with aspect ratio w/h in (0.4, 0.6); horizontal
flip 0.5; colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8;
grayscale 0.2; Gaussian blur with p 1.0 (global 1), 0.1 (global 2), 0.5 (locals), sigma in
(0.1, 2.0) pixels at the reference 256x128 size (scaled with ``global_size``); solarise with
p 0.2 on global 2; ImageNet mean/std. Optional, off by default (not in DINO's set): a
white-balance jitter, each channel scaled by ``exp(U(-gain_jitter, gain_jitter))`` with
probability ``gain_p``, before the colour jitter.

Why it is faster than the torchvision-PIL pipeline of DINO (measured in
``benchmarks/pretrain_throughput.py``): the image is decoded once (with JPEG draft decoding when
it is much larger than needed); each crop is cut and resized by one PIL call
(``Image.resize(box=...)``) and flipped in PIL; colour jitter and grayscale are per-crop 3x3
colour matrices applied to all crops of one size by batched matrix products
(:func:`colour_jitter`), instead of four PIL passes (two of them through HSV) per crop; the
blur is one separable grouped convolution over all blurred crops of one size.

Randomness: every call takes a 64-bit ``seed`` (given per sample by
:class:`cion.data.sampler.IdentityBatchSampler`), so the crops of an image depend only on that
seed: identical across runs, resumes, worker counts and process counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cion.errors import CionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    gain_p: float = 0.0          # white-balance jitter (off in SPEC's recipe): probability ...
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


# ---- batched photometric operations on (N, 3, H, W) float tensors in [0, 1] -----------------
_GRAY = np.array([0.299, 0.587, 0.114])
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def colour_jitter(x: torch.Tensor, rng: np.random.Generator, jitter=(0.4, 0.4, 0.2, 0.1),
                  jitter_p: float = 0.8, gray_p: float = 0.2) -> torch.Tensor:
    """Random colour jitter then random grayscale of ``n`` crops at once, in place.

    ``x``: (n, 3, P) float pixels in [0, 1] (P = H * W). Each crop is jittered with probability
    ``jitter_p`` by brightness, contrast, saturation and hue factors drawn like torchvision's
    ``ColorJitter(*jitter)``, the four applied in a random order (one order per call) with a
    clamp to [0, 1] after each, like torchvision. Every operation is a per-crop 3x3 colour
    matrix (contrast adds the crop's mean gray level), so each is one batched matrix product
    over all crops: brightness ``b x``; contrast ``c x + (1 - c) mean(gray(x))``; saturation
    ``s x + (1 - s) gray(x)``; hue a rotation by ``2 pi h`` of the chroma plane in YIQ space
    (torchvision shifts the hue in HSV; the YIQ rotation keeps luma and grays). Grayscale
    (probability ``gray_p``) replaces the three channels by ``gray(x)``.
    """
    n = x.shape[0]
    bj, cj, sj, hj = jitter
    u = rng.random((n, 6))
    jit = u[:, 0] < jitter_p
    fb = np.where(jit, 1 - bj + 2 * bj * u[:, 1], 1.0) if bj > 0 else np.ones(n)
    fc = np.where(jit, 1 - cj + 2 * cj * u[:, 2], 1.0) if cj > 0 else np.ones(n)
    fs = np.where(jit, 1 - sj + 2 * sj * u[:, 3], 1.0) if sj > 0 else np.ones(n)
    fh = np.where(jit, -hj + 2 * hj * u[:, 4], 0.0)
    gray = u[:, 5] < gray_p
    eye = np.eye(3)
    gray_rows = np.tile(_GRAY, (3, 1))                                 # x -> gray(x) * (1, 1, 1)
    active = jit.any()
    for op in rng.permutation(4):
        if not active:
            break
        off = None
        if op == 0:                                                    # brightness
            M = fb[:, None, None] * eye
        elif op == 1:                                                  # contrast
            M = fc[:, None, None] * eye
            mean_gray = (x.mean(dim=2).double().numpy() @ _GRAY)       # (n,) of the current image
            off = np.repeat(((1 - fc) * mean_gray)[:, None], 3, 1)
        elif op == 2:                                                  # saturation
            M = fs[:, None, None] * eye + (1 - fs)[:, None, None] * gray_rows
        else:                                                          # hue
            c, s = np.cos(2 * np.pi * fh), np.sin(2 * np.pi * fh)
            R = np.zeros((n, 3, 3))
            R[:, 0, 0] = 1
            R[:, 1, 1], R[:, 1, 2], R[:, 2, 1], R[:, 2, 2] = c, -s, s, c
            M = _YIQ2RGB @ R @ _RGB2YIQ
        Mt = torch.from_numpy(M).float()
        if off is None:
            x = torch.bmm(Mt, x)
        else:
            x = torch.baddbmm(torch.from_numpy(off).float().unsqueeze(2), Mt, x)
        x.clamp_(0, 1)
    if gray.any():
        sel = torch.from_numpy(gray)
        x[sel] = (torch.from_numpy(_GRAY).float().view(1, 3, 1) * x[sel]).sum(1, keepdim=True).expand(-1, 3, -1)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with one sigma (pixels) per image, reflect pad.

    The kernel spans ``ceil(3 * max(sigma))`` pixels each side (capped by the image size).
    """
    n, c, h, w = x.shape
    half = max(1, min(int(math.ceil(3.0 * float(sigma.max()))), min(h, w) - 1))
    t = torch.arange(-half, half + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)            # (N*C, 2*half+1)
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


class MultiCropAugment:
    """``augment(img, seed) -> (globals (2, 3, Hg, Wg), locals (L, 3, Hl, Wl))`` float32,
    normalised. ``img`` is a PIL image (any mode) or a path."""

    def __init__(self, cfg: MultiCropConfig | None = None):
        self.cfg = cfg or MultiCropConfig()
        mean = torch.tensor(self.cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std).view(1, 3, 1, 1)
        self._inv_std, self._shift = 1.0 / std, -mean / std

    def load(self, path: str) -> Image.Image:
        """RGB image; an unreadable file raises :class:`cion.data.images.BadImageError`."""
        from cion.data.images import read_rgb

        gh, gw = self.cfg.global_size
        return read_rgb(path, draft=(2 * gw, 2 * gh))  # JPEG: decode at 1/2..1/8 when much larger

    def _views(self, img: Image.Image, rng: np.random.Generator, n: int, size: tuple[int, int],
               scale: tuple[float, float], blur_p: np.ndarray, solarize_p: np.ndarray) -> torch.Tensor:
        """``n`` augmented views of one size: (n, 3, H, W) float32, normalised.

        Per crop, in PIL on uint8 (C code): crop + resize in one call, flip. Then for all crops
        at once, in DINO's order: colour jitter + grayscale (:func:`colour_jitter`), Gaussian
        blur (:func:`gaussian_blur`, one sigma per crop), solarise, normalise.
        """
        cfg = self.cfg
        h, w = size
        boxes = random_resized_boxes(rng, n, img.size[0], img.size[1], scale, cfg.ratio)
        flip = rng.random(n) < cfg.flip_p
        blur = rng.random(n) < blur_p
        sigma = rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], n) * cfg.sigma_scale
        crops = []
        for i, box in enumerate(boxes.tolist()):   # per crop: one or two C calls
            c = img.resize((w, h), Image.BILINEAR, box=tuple(box))
            crops.append(np.asarray(c.transpose(Image.FLIP_LEFT_RIGHT) if flip[i] else c))
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).reshape(n, 3, h * w).float().div_(255)
        if cfg.gain_p > 0 and cfg.gain_jitter > 0:   # a camera's white balance: per-channel gain
            gain = np.exp(rng.uniform(-cfg.gain_jitter, cfg.gain_jitter, (n, 3)))
            gain[rng.random(n) >= cfg.gain_p] = 1.0
            x = x.mul_(torch.from_numpy(gain).float().unsqueeze(2)).clamp_(0, 1)
        x = colour_jitter(x, rng, cfg.jitter, cfg.jitter_p, cfg.gray_p).view(n, 3, h, w)
        if blur.any():
            sel = torch.from_numpy(blur)
            x[sel] = gaussian_blur(x[sel], torch.from_numpy(sigma[blur]).float())
        sol = rng.random(n) < solarize_p
        if sol.any():
            sel = torch.from_numpy(sol)
            z = x[sel]
            x[sel] = torch.where(z >= 128 / 255, 1.0 - z, z)
        return x.mul_(self._inv_std).add_(self._shift)

    def __call__(self, img, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if not isinstance(img, Image.Image):
            img = self.load(str(img))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        rng = np.random.default_rng(int(seed))
        glob = self._views(img, rng, 2, cfg.global_size, cfg.global_scale,
                           np.array(cfg.blur_p[:2]), np.array([0.0, cfg.solarize_p]))
        L = cfg.local_crops
        if L > 0:
            loc = self._views(img, rng, L, cfg.local_size, cfg.local_scale,
                              np.full(L, cfg.blur_p[2]), np.zeros(L))
        else:
            loc = torch.empty(0, 3, *cfg.local_size)
        return glob, loc


class MultiCropDataset(torch.utils.data.Dataset):
    """Dataset over image paths, indexed by the sampler's ``(row, aug_seed, label)`` items.

    ``dataset[(row, seed, label)]`` -> ``(globals, locals, label)``; default collation stacks
    them into (B, 2, 3, Hg, Wg), (B, L, 3, Hl, Wl) and (B,).
    """

    def __init__(self, paths: list[str], augment: MultiCropAugment):
        self.paths = list(paths)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        row, seed, label = item
        glob, loc = self.augment(self.augment.load(self.paths[row]), seed)
        return glob, loc, label


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
