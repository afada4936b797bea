"""The per-pixel half of CION's multi-crop augmentation, batched on any device.

Pre-training (paper Sec. 3.3, DINO's recipe with person sizes) augments every image into
2 global + L local views. :mod:`cion.data.transforms` splits that work at its natural seam:

* the DataLoader workers (CPU) decode, crop + resize and flip every view and send **uint8**
  pixels, plus one row of parameters per view (this module's :func:`draw_photometric`);
* :class:`PhotometricAugment` then applies, to all views of a batch at once and on the
  training device after the copy: white-balance gain, colour jitter, grayscale, Gaussian blur,
  solarise and the ImageNet normalisation.

The parameter row of a view holds what its image's random stream drew for it, already turned
into the numbers the pixels need (so the device part has no random draws and no host
round-trip): the per-channel gain, the four 3x3 colour matrices of the jitter in the drawn
order with the contrast coefficient of each, the grayscale and solarise flags, and the view's
normalised 1-D Gaussian kernel (a unit impulse when the view is not blurred). Row layout
(float64, :data:`WIDTH_FIXED` + ``2 R + 1`` columns, ``R`` = :func:`blur_radius`):

    [0:3]   gain (R, G, B)                 [39:43] contrast coefficient of each step
    [3:39]  4 colour matrices, row-major    [43]    grayscale flag   [44] solarise flag
    [45]    blur half-width h (0: no blur)  [46:]   blur kernel, centred, 2R + 1 taps

The views equal those of the former per-image implementation (same draws in the same order,
same operations in the same memory layout: bit-identical on the CPU), see
``tests/test_transforms_split.py``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

GAIN = slice(0, 3)
MATRICES = slice(3, 39)
CONTRAST = slice(39, 43)
GRAY_FLAG = 43
SOLARIZE_FLAG = 44
KERNEL_HALF = 45
KERNEL_START = 46
WIDTH_FIXED = 46

_GRAY = np.array([0.299, 0.587, 0.114])
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def blur_radius(size: tuple[int, int], blur_sigma: tuple[float, float], sigma_scale: float) -> int:
    """Largest kernel radius (pixels) a view of ``size`` (H, W) can get: ``ceil(3 sigma_max)``,
    capped by the view size (reflect padding needs radius < min(H, W))."""
    top = float(np.float32(blur_sigma[1] * sigma_scale))
    return max(1, min(int(math.ceil(3.0 * top)), min(size) - 1))


def draw_jitter(rng: np.random.Generator, n: int, jitter=(0.4, 0.4, 0.2, 0.1),
                jitter_p: float = 0.8, gray_p: float = 0.2):
    """Colour-jitter and grayscale draws of ``n`` views of one image and size.

    Each view is jittered with probability ``jitter_p`` by brightness, contrast, saturation
    and hue factors drawn like torchvision's ``ColorJitter(*jitter)``; the four operations run
    in one random order for the ``n`` views. Each operation is a per-view 3x3 colour matrix
    (contrast also adds ``coefficient x mean gray level`` of the current view): brightness
    ``b x``; contrast ``c x + (1 - c) mean(gray(x))``; saturation ``s x + (1 - s) gray(x)``;
    hue a rotation by ``2 pi h`` of the chroma plane in YIQ space (torchvision shifts the hue in
    HSV; the YIQ rotation keeps luma and grays). When no view of the group is jittered every
    matrix is the identity (the pixels are untouched).

    Returns ``(matrices (4, n, 3, 3), contrast (4, n), gray (n,) bool)``, float64, in the
    order the operations apply. Draws, in order: ``random((n, 6))``, ``permutation(4)``.
    """
    bj, cj, sj, hj = jitter
    u = rng.random((n, 6))
    jit = u[:, 0] < jitter_p
    fb = np.where(jit, 1 - bj + 2 * bj * u[:, 1], 1.0) if bj > 0 else np.ones(n)
    fc = np.where(jit, 1 - cj + 2 * cj * u[:, 2], 1.0) if cj > 0 else np.ones(n)
    fs = np.where(jit, 1 - sj + 2 * sj * u[:, 3], 1.0) if sj > 0 else np.ones(n)
    fh = np.where(jit, -hj + 2 * hj * u[:, 4], 0.0)
    gray = u[:, 5] < gray_p
    order = rng.permutation(4)
    eye = np.eye(3)
    matrices = np.broadcast_to(eye, (4, n, 3, 3)).copy()
    contrast = np.zeros((4, n))
    if not jit.any():
        return matrices, contrast, gray
    gray_rows = np.tile(_GRAY, (3, 1))                                 # x -> gray(x) * (1, 1, 1)
    for step, op in enumerate(order):
        if op == 0:                                                    # brightness
            matrices[step] = fb[:, None, None] * eye
        elif op == 1:                                                  # contrast
            matrices[step] = fc[:, None, None] * eye
            contrast[step] = 1 - fc
        elif op == 2:                                                  # saturation
            matrices[step] = fs[:, None, None] * eye + (1 - fs)[:, None, None] * gray_rows
        else:                                                          # hue
            c, s = np.cos(2 * np.pi * fh), np.sin(2 * np.pi * fh)
            rot = np.zeros((n, 3, 3))
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
            matrices[step] = _YIQ2RGB @ rot @ _RGB2YIQ
    return matrices, contrast, gray


def blur_kernels(sigma: np.ndarray, blurred: np.ndarray, size: tuple[int, int],
                 radius: int) -> tuple[np.ndarray, int]:
    """1-D Gaussian kernels (n, 2 radius + 1) of ``n`` views of one image and size.

    The blurred views share one support, ``ceil(3 x the largest of their sigmas)`` pixels each
    side (capped by the view size), and are normalised on it (float32 arithmetic); each is
    centred in ``2 radius + 1`` taps with zeros outside. Views not blurred get a unit impulse.
    Returns ``(kernels, half)``, ``half`` the support of the blurred views (0 when none).
    """
    n = len(sigma)
    out = np.zeros((n, 2 * radius + 1))
    out[:, radius] = 1.0
    half = 0
    if blurred.any():
        s = torch.from_numpy(sigma[blurred]).float()
        half = max(1, min(int(math.ceil(3.0 * float(s.max()))), min(size) - 1))
        t = torch.arange(-half, half + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t[None, :] / s[:, None]) ** 2)
        k = k / k.sum(1, keepdim=True)
        rows = np.zeros((len(s), 2 * radius + 1))
        rows[:, radius - half:radius + half + 1] = k.numpy()
        out[blurred] = rows
    return out, half


def draw_photometric(rng: np.random.Generator, n: int, size: tuple[int, int], cfg,
                     blur_p: np.ndarray, solarize_p: np.ndarray) -> np.ndarray:
    """Parameter rows (n, WIDTH_FIXED + 2 R + 1) float64 of ``n`` views of one image and size.

    ``cfg``: a :class:`cion.data.transforms.MultiCropConfig`; ``blur_p`` / ``solarize_p``: (n,)
    probabilities per view. Draws, in this order (the order of the former per-image code, so
    a seed gives the same views): blur flags, sigmas, [gain values, gain flags], colour jitter
    (:func:`draw_jitter`), solarise flags.
    """
    blurred = rng.random(n) < blur_p
    sigma = rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], n) * cfg.sigma_scale
    gain = np.ones((n, 3))
    if cfg.gain_p > 0 and cfg.gain_jitter > 0:      # a camera's white balance: per-channel gain
        gain = np.exp(rng.uniform(-cfg.gain_jitter, cfg.gain_jitter, (n, 3)))
        gain[rng.random(n) >= cfg.gain_p] = 1.0
    matrices, contrast, gray = draw_jitter(rng, n, cfg.jitter, cfg.jitter_p, cfg.gray_p)
    solarize = rng.random(n) < solarize_p
    radius = blur_radius(size, cfg.blur_sigma, cfg.sigma_scale)
    kernels, half = blur_kernels(sigma, blurred, size, radius)
    return np.concatenate([gain, matrices.transpose(1, 0, 2, 3).reshape(n, 36), contrast.T,
                           gray[:, None], solarize[:, None], (half * blurred)[:, None],
                           kernels], axis=1)


def apply_jitter(x: torch.Tensor, matrices: torch.Tensor, contrast: torch.Tensor,
                 skip_offsets: tuple[bool, ...] = (False,) * 4) -> torch.Tensor:
    """The four colour steps on (n, 3, P) pixels in [0, 1], clamped to [0, 1] after each.

    ``matrices`` (n, 4, 3, 3) and ``contrast`` (n, 4) float64 (see :func:`draw_jitter`);
    ``skip_offsets[k]`` True when no view has a contrast coefficient at step ``k`` (saves the
    mean; the result is the same).
    """
    gray = _constants(x.device)["gray64"]
    for k in range(4):
        m = matrices[:, k].float().contiguous()
        if skip_offsets[k]:
            x = torch.bmm(m, x)
        else:
            if x.device.type == "cpu":   # numpy's dot, as the former code: bit-identical views
                mean_gray = torch.from_numpy(x.mean(dim=2).double().numpy() @ _GRAY)
            else:
                mean_gray = x.mean(dim=2).double() @ gray                          # (n,)
            off = (contrast[:, k] * mean_gray).float().view(-1, 1, 1).expand(-1, 3, 1).contiguous()
            x = torch.baddbmm(off, m, x)
        x.clamp_(0, 1)
    return x


def blur_separable(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable blur of (n, C, H, W) with one 1-D kernel per image (n, 2 r + 1), reflect pad.

    A depthwise convolution; TF32 is switched off for it on CUDA so the views do not depend on
    the GPU's matmul settings.
    """
    n, c, h, w = x.shape
    r = (kernels.shape[1] - 1) // 2
    k = kernels.to(x.dtype).repeat_interleave(c, 0)                        # (n*C, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    with _no_tf32(x.device):
        y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
        y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` without blocking the host: a CPU tensor bound for a GPU is first
    pinned (PyTorch's caching host allocator: cheap for small tensors after the first call)."""
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@functools.lru_cache(maxsize=None)
def _constants(device: torch.device) -> dict:
    """Small constant tensors, made once per device (a fresh one per call would be a
    blocking host-to-device copy on CUDA)."""
    return {"gray64": torch.tensor(_GRAY, dtype=torch.float64, device=device),
            "gray": torch.tensor(_GRAY, dtype=torch.float32, device=device).view(1, 3, 1)}


def _no_tf32(device: torch.device):
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                       deterministic=cudnn.deterministic, allow_tf32=False)


class PhotometricAugment:
    """``augment(views, params) -> (n, 3, H, W) float32``, normalised, on ``views.device``.

    ``views``: (n, H, W, 3) uint8 crops, channels last as PIL makes them (any device; the
    arithmetic follows that layout, so CPU results are bit-identical to the former per-image
    code); ``params``: (n, K) float64 rows of
    :func:`draw_photometric` (any device). Steps, in DINO's order: gain, colour jitter,
    grayscale, Gaussian blur (only the views drawn for it), solarise, normalise (ImageNet mean
    and std by default). All views of the call are processed at once, whatever their image;
    on the CPU in chunks of ``cpu_chunk`` views (cache-sized).

    ``plan``: :func:`batch_plan` of the same rows, read on the host. Give it when ``params``
    already sit on the accelerator and their CPU copy is at hand (the trainer does): it skips
    steps no view needs and blurs only the blurred views, without a device round-trip. Without
    it, CPU ``params`` are planned here and accelerator ones run every step on every view.
    """

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), cpu_chunk: int = 16):
        self.mean, self.std = tuple(mean), tuple(std)
        self.cpu_chunk = cpu_chunk
        self._norm: dict = {}

    def _normaliser(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 / std, -mean / std) as (1, 3, 1, 1) float32 on ``dev``, cached per device."""
        key = str(dev)
        if key not in self._norm:
            std = torch.tensor(self.std).view(1, 3, 1, 1)
            mean = torch.tensor(self.mean).view(1, 3, 1, 1)
            self._norm[key] = ((1.0 / std).to(dev), (-mean / std).to(dev))
        return self._norm[key]

    def __call__(self, views: torch.Tensor, params: torch.Tensor,
                 plan: dict | None = None) -> torch.Tensor:
        n, h, w, _ = views.shape
        dev = views.device
        if dev.type == "cpu" and plan is None and n > self.cpu_chunk:
            out = torch.empty(n, 3, h, w)
            for i in range(0, n, self.cpu_chunk):
                out[i:i + self.cpu_chunk] = self(views[i:i + self.cpu_chunk],
                                                 params[i:i + self.cpu_chunk])
            return out
        if n == 0:
            return torch.empty(0, 3, h, w, device=dev)
        plan = batch_plan(params) if plan is None else plan
        p = params.to(dev, torch.float64, non_blocking=True)
        x = views.permute(0, 3, 1, 2).reshape(n, 3, h * w).float().div_(255)
        if plan["gain"]:
            x = x.mul_(p[:, GAIN].float().unsqueeze(2)).clamp_(0, 1)
        if plan["jitter"]:
            x = apply_jitter(x, p[:, MATRICES].view(n, 4, 3, 3), p[:, CONTRAST],
                             tuple(not v for v in plan["offsets"]))
        if plan["gray"]:
            g = (_constants(dev)["gray"] * x).sum(1, keepdim=True)
            x = torch.where(p[:, GRAY_FLAG].view(n, 1, 1) > 0.5, g.expand_as(x), x)
        x = x.reshape(n, 3, h, w)
        if plan["blurred"] is None:
            x = blur_separable(x, p[:, KERNEL_START:])
        else:   # one convolution per support width: each view's own arithmetic, exactly
            r = (p.shape[1] - KERNEL_START - 1) // 2
            for half, views_idx in plan["blurred"]:
                idx = to_device_async(views_idx, dev)
                k = p.index_select(0, idx)[:, KERNEL_START + r - half:KERNEL_START + r + half + 1]
                x.index_copy_(0, idx, blur_separable(x.index_select(0, idx), k))
        if plan["solarize"]:
            sol = p[:, SOLARIZE_FLAG].view(n, 1, 1, 1) > 0.5
            x = torch.where(sol & (x >= 128 / 255), 1.0 - x, x)
        inv_std, shift = self._normaliser(dev)
        return x.mul_(inv_std).add_(shift)


def batch_plan(params: torch.Tensor) -> dict:
    """Which steps some view of ``params`` (n, K) needs, read from CPU rows (no device sync):
    ``{"gain", "jitter", "gray", "solarize": bool, "offsets": 4 bools (contrast at step k),
    "blurred": [(half-width, int64 indices of the views blurred with it), ...]}``. Rows on an
    accelerator are not read: every step runs (``blurred`` None: blur every view with the full
    kernel width, impulses are exact)."""
    if params.device.type != "cpu":
        return {"gain": True, "jitter": True, "offsets": (True,) * 4, "gray": True,
                "blurred": None, "solarize": True}
    p = params
    eye = torch.eye(3, dtype=p.dtype).flatten().repeat(4)
    contrast = p[:, CONTRAST] != 0
    halves = p[:, KERNEL_HALF].long()
    return {"gain": not bool((p[:, GAIN] == 1).all()),
            "jitter": not bool((p[:, MATRICES] == eye).all()),
            "offsets": tuple(bool(v) for v in contrast.any(0)),
            "gray": bool((p[:, GRAY_FLAG] > 0.5).any()),
            "blurred": [(int(h), torch.nonzero(halves == h).flatten())
                        for h in torch.unique(halves[halves > 0]).tolist()],
            "solarize": bool((p[:, SOLARIZE_FLAG] > 0.5).any())}
