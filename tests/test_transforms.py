"""Multi-crop person augmentation: shapes, determinism, the colour algebra, blur, crop boxes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cion.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, MultiCropAugment, MultiCropConfig,
                                  colour_jitter, gaussian_blur, random_resized_boxes,
                                  torchvision_multicrop)


def _img(h=64, w=32, seed=0, smooth=False):
    rng = np.random.default_rng(seed)
    if smooth:  # a natural-looking image: low-resolution noise, upsampled
        small = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8))
        return small.resize((w, h), Image.BICUBIC)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8))


def test_shapes_and_determinism():
    cfg = MultiCropConfig(global_size=(64, 32), local_size=(32, 16), local_crops=3)
    aug = MultiCropAugment(cfg)
    g, l = aug(_img(), seed=123)
    assert g.shape == (2, 3, 64, 32) and l.shape == (3, 3, 32, 16)
    assert g.dtype == torch.float32
    g2, l2 = aug(_img(), seed=123)
    assert torch.equal(g, g2) and torch.equal(l, l2)
    g3, _ = aug(_img(), seed=124)
    assert not torch.equal(g, g3)
    # values are normalised pixels: within the ImageNet-normalised range of [0, 1]
    lo = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    hi = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for c in range(3):
        assert g[:, c].min() >= lo[c] - 1e-5 and g[:, c].max() <= hi[c] + 1e-5


def test_no_randomness_is_a_plain_resize():
    cfg = MultiCropConfig(global_size=(32, 16), local_size=(16, 8), local_crops=1,
                          global_scale=(1.0, 1.0), ratio=(0.5, 0.5), flip_p=0, jitter_p=0,
                          gray_p=0, blur_p=(0, 0, 0), solarize_p=0)
    img = _img(64, 32)
    g, _ = MultiCropAugment(cfg)(img, seed=0)
    want = np.asarray(img.resize((16, 32), Image.BILINEAR)).astype(np.float32) / 255
    want = (torch.from_numpy(want).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(g[0], want, atol=1e-5) and torch.allclose(g[1], want, atol=1e-5)


def test_white_balance_gain_jitter():
    """gain_p 1: every crop is the plain resize with each channel scaled by exp(U(-g, g))."""
    plain = dict(global_size=(32, 16), local_size=(16, 8), local_crops=0, global_scale=(1.0, 1.0),
                 ratio=(0.5, 0.5), flip_p=0, jitter_p=0, gray_p=0, blur_p=(0, 0, 0), solarize_p=0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = Image.fromarray(np.full((64, 32, 3), 100, np.uint8))     # mid grey: no clamping
    base, _ = MultiCropAugment(MultiCropConfig(**plain))(img, seed=5)
    gained, _ = MultiCropAugment(MultiCropConfig(**plain, gain_p=1.0, gain_jitter=0.3))(img, seed=5)
    ratio = (gained * std + mean) / (base * std + mean)             # (2, 3, H, W) per-channel gain
    per_channel = ratio.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-4)
    g = per_channel[..., 0]
    assert (g.log().abs() <= 0.3 + 1e-4).all() and (g - 1).abs().max() > 0.01
    assert not torch.allclose(g[:, 0], g[:, 1])                    # channels differ: a colour cast


def test_colour_jitter_operations():
    rng = np.random.default_rng(0)
    x = torch.rand(6, 3, 50) * 0.5 + 0.25                         # mid-range: no clamping
    gray = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1)
    same = colour_jitter(x.clone(), rng, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(same, x)                                 # no jitter: identity
    y = colour_jitter(x.clone(), rng, jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=1.0, gray_p=0.0)
    b = (y / x).mean(dim=(1, 2))
    assert torch.allclose(y, b.view(-1, 1, 1) * x, atol=1e-5) and ((b >= 0.6) & (b <= 1.4)).all()
    y = colour_jitter(x.clone(), rng, jitter=(0, 0, 0, 0), jitter_p=1.0, gray_p=1.0)
    assert torch.allclose(y, (gray * x).sum(1, keepdim=True).expand_as(x), atol=1e-6)
    y = colour_jitter(x.clone(), rng, jitter=(0, 0.2, 0, 0), jitter_p=1.0, gray_p=0.0)
    assert torch.allclose((gray * y).sum(1).mean(1), (gray * x).sum(1).mean(1), atol=1e-5)
    assert not torch.allclose(y, x)                                # contrast keeps mean gray only
    y = colour_jitter(x.clone(), rng, jitter=(0, 0, 0.2, 0), jitter_p=1.0, gray_p=0.0)
    assert torch.allclose((gray * y).sum(1), (gray * x).sum(1), atol=1e-5)   # saturation keeps luma
    grays = torch.full((4, 3, 10), 0.4)
    y = colour_jitter(grays.clone(), rng, jitter=(0, 0, 0, 0.5), jitter_p=1.0, gray_p=0.0)
    assert torch.allclose(y, grays, atol=1e-5)                     # hue keeps grays gray
    y = colour_jitter(torch.ones(3, 3, 4), rng, jitter=(0.4, 0, 0, 0), jitter_p=1.0, gray_p=0.0)
    assert y.max() <= 1.0                                          # clamped to [0, 1]


def test_gaussian_blur_against_dense_reference():
    x = torch.rand(3, 3, 20, 12)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    out = gaussian_blur(x, sigma)
    half = 6
    for n in range(3):  # reference: explicit 2-D kernel, reflect padding
        tt = torch.arange(-half, half + 1, dtype=torch.float32)
        k1 = torch.exp(-0.5 * (tt / sigma[n]) ** 2)
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :]).expand(3, 1, -1, -1)
        pad = torch.nn.functional.pad(x[n:n + 1], (half,) * 4, mode="reflect")
        ref = torch.nn.functional.conv2d(pad, k2, groups=3)
        assert torch.allclose(out[n], ref[0], atol=1e-5)
    const = torch.full((2, 3, 16, 8), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([1.0, 2.0])), const, atol=1e-6)


def test_blur_and_solarize_take_effect():
    base = dict(global_size=(256, 128), local_size=(16, 8), local_crops=0, global_scale=(1.0, 1.0),
                ratio=(0.5, 0.5), flip_p=0, jitter_p=0, gray_p=0, solarize_p=0)
    img = _img(256, 128)
    sharp, _ = MultiCropAugment(MultiCropConfig(**base, blur_p=(0, 0, 0)))(img, seed=1)
    soft, _ = MultiCropAugment(MultiCropConfig(**base, blur_p=(1, 1, 1)))(img, seed=1)

    def roughness(t):
        return (t[..., 1:, :] - t[..., :-1, :]).abs().mean().item()
    assert roughness(soft) < 0.7 * roughness(sharp)
    sol, _ = MultiCropAugment(MultiCropConfig(**dict(base, solarize_p=1.0), blur_p=(0, 0, 0)))(img, seed=1)
    assert torch.equal(sol[0], sharp[0])                       # solarise acts on global 2 only
    px = sharp[1] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    want = torch.where(px >= 128 / 255, 1 - px, px)
    got = sol[1] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(got, want, atol=1e-5)


def test_crop_boxes_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = random_resized_boxes(rng, 500, 128, 256, (0.05, 0.8), (0.4, 0.6))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 128) and np.all(boxes[:, 3] <= 256)
    area = w * h / (128 * 256)
    assert area.min() > 0.04 and area.max() < 0.82
    assert np.all((w / h > 0.38) & (w / h < 0.62))


def test_statistics_close_to_torchvision_pipeline():
    """Same recipe, other implementation: per-channel means and stds of many crops agree."""
    cfg = MultiCropConfig(global_size=(64, 32), local_size=(32, 16), local_crops=2)
    ours, ref = MultiCropAugment(cfg), torchvision_multicrop(cfg)
    imgs = [_img(128, 64, s, smooth=True) for s in range(2)]
    np.random.seed(0)
    torch.manual_seed(0)
    a = torch.stack([ours(im, s)[0] for s in range(25) for im in imgs])
    b = torch.stack([torch.stack(ref(im)[:2]) for _ in range(25) for im in imgs])
    assert torch.allclose(a.mean(dim=(0, 1, 3, 4)), b.mean(dim=(0, 1, 3, 4)), atol=0.08)
    assert torch.allclose(a.std(dim=(0, 1, 3, 4)), b.std(dim=(0, 1, 3, 4)), rtol=0.15)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception, match="bad.jpg"):
        MultiCropAugment().load(str(bad))
