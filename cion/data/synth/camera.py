"""Cameras with their own look, and the scenes they film.

Each camera has an illumination level and white balance (a per-channel gain), contrast, haze,
blur, sensor noise, an effective resolution, a JPEG quality, an occlusion rate and a favourite
walking direction (which viewpoints it sees). A scene is a wide background strip (wall, floor,
clutter) that a walking person crosses; crops slide along it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cion.data.synth.render import VIEWS


@dataclass(frozen=True)
class CameraLook:
    """The imaging chain of one camera. Pixel values are on the 0..255 scale."""

    gain: tuple          # per-channel multiplier: illumination x white balance
    contrast: float      # around mid-grey
    haze: float          # additive offset
    blur: float          # Gaussian radius at 128 px crop height
    noise: float         # sensor noise std
    resolution: float    # effective resolution as a fraction of the crop size
    jpeg_quality: int
    occlusion: float     # probability that an object hides part of the person
    views: tuple         # probabilities of front, back, left, right
    wall: tuple          # scene colours
    floor: tuple


def _muted(rng: np.random.Generator, lo: int, hi: int) -> tuple:
    """A low-saturation colour (streets and walls are mostly grey, beige, brown)."""
    grey = rng.uniform(lo, hi)
    return tuple(int(v) for v in np.clip(grey + rng.normal(0.0, 12.0, 3), 0, 255))


def sample_look(rng: np.random.Generator) -> CameraLook:
    light = rng.uniform(0.6, 1.25)
    balance = np.exp(rng.normal(0.0, 0.12, 3))
    views = rng.dirichlet([1.2, 1.2, 1.2, 1.2])
    return CameraLook(
        gain=tuple(float(v) for v in light * balance / balance.mean()),
        contrast=float(rng.uniform(0.7, 1.15)),
        haze=float(rng.uniform(0.0, 35.0)),
        blur=float(rng.choice([0.0, rng.uniform(0.4, 1.3)], p=[0.4, 0.6])),
        noise=float(rng.uniform(2.0, 9.0)),
        resolution=float(rng.uniform(0.45, 1.0)),
        jpeg_quality=int(rng.integers(35, 95)),
        occlusion=float(rng.uniform(0.03, 0.25)),
        views=tuple(float(v) for v in views),
        wall=_muted(rng, 70, 210),
        floor=_muted(rng, 50, 170),
    )


def soften_look(look: CameraLook, strength: float) -> CameraLook:
    """Move a look towards a neutral camera: ``strength`` 1 keeps it, 0 gives unit gain and
    contrast, no haze, no blur and full resolution (noise, JPEG, occlusion, views and scene
    colours are kept)."""
    from dataclasses import replace

    s = float(strength)
    return replace(look, gain=tuple(1.0 + s * (g - 1.0) for g in look.gain),
                   contrast=1.0 + s * (look.contrast - 1.0), haze=s * look.haze,
                   blur=s * look.blur, resolution=1.0 - s * (1.0 - look.resolution))


def sample_view(rng: np.random.Generator, look: CameraLook) -> str:
    return VIEWS[rng.choice(4, p=look.views)]


def make_scene(rng: np.random.Generator, look: CameraLook, height: int, width: int) -> np.ndarray:
    """A cluttered background strip, (height, width, 3) uint8."""
    img = Image.new("RGB", (width, height), look.wall)
    draw = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.55, 0.75))
    draw.rectangle([0, horizon, width, height], fill=look.floor)
    for _ in range(int(width / height * rng.uniform(4, 9))):  # windows, doors, signs, poles
        w = rng.uniform(0.05, 0.5) * height
        h = rng.uniform(0.05, 0.7) * height
        x, y = rng.uniform(-w / 2, width), rng.uniform(-h / 3, horizon - h / 3)
        tint = rng.normal(0, 40, 3) if rng.random() < 0.15 else rng.normal(0, 10, 3)  # few signs
        colour = tuple(int(c) for c in np.clip(np.asarray(look.wall) * rng.uniform(0.6, 1.3) + tint, 0, 255))
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    for _ in range(int(width / height * 2)):  # thin poles and kerbs
        x = rng.uniform(0, width)
        draw.rectangle([x, rng.uniform(0, horizon), x + rng.uniform(1, 4), height],
                       fill=_muted(rng, 20, 180))
    arr = np.asarray(img, dtype=np.float32)
    shade = np.linspace(1.1, 0.85, height, dtype=np.float32)[:, None, None]
    return np.clip(arr * shade, 0, 255).astype(np.uint8)


def apply_camera(image: Image.Image, look: CameraLook, rng: np.random.Generator,
                 noise_bank: np.ndarray, brightness: float = 1.0, tint=(1.0, 1.0, 1.0),
                 detail: float = 1.0) -> Image.Image:
    """Pass a clean RGB crop through the camera's imaging chain (everything but JPEG).

    ``brightness`` and ``tint`` (RGB gains) are the scene's light at that moment, ``detail``
    scales the camera's resolution (a person far from the camera is a blurrier crop)."""
    h, w = image.height, image.width
    scale = h / 128.0
    if look.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(look.blur * scale))
    resolution = look.resolution * detail
    if resolution < 0.97:
        small = (max(4, round(w * resolution)), max(8, round(h * resolution)))
        image = image.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32)
    gain = np.asarray(look.gain, dtype=np.float32) * np.asarray(tint, dtype=np.float32) \
        * (look.contrast * brightness)
    offset = (128.0 * (1.0 - look.contrast) + look.haze) * brightness
    oy = int(rng.integers(noise_bank.shape[0] - h + 1))
    ox = int(rng.integers(noise_bank.shape[1] - w + 1))
    x = x * gain + offset + noise_bank[oy:oy + h, ox:ox + w] * look.noise
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
