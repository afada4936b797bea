"""The worker / device split of the multi-crop augmentation gives the views of the former
per-image implementation (tests/multicrop_reference.py), per image and batched over images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from multicrop_reference import ReferenceMultiCropAugment
from PIL import Image

from cion.data.photometric import KERNEL_START, PhotometricAugment, batch_plan
from cion.data.transforms import MultiCropAugment, MultiCropConfig, MultiCropDataset, finish_views

RECIPES = {
    "paper (scaled down)": dict(global_size=(64, 32), local_size=(32, 16), local_crops=4),
    "demo": dict(global_size=(64, 32), local_size=(32, 16), local_crops=0,
                 jitter=(0.2, 0.2, 0.1, 0.05), gray_p=0.0, solarize_p=0.0),
    "everything on": dict(global_size=(48, 24), local_size=(24, 12), local_crops=3, jitter_p=1.0,
                          gray_p=0.5, blur_p=(1.0, 1.0, 1.0), solarize_p=1.0, gain_p=0.7,
                          gain_jitter=0.3),
}


def _img(h, w, seed):
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8))
    return small.resize((w, h), Image.BICUBIC)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_per_image_views_equal_the_former_implementation(recipe):
    cfg = MultiCropConfig(**RECIPES[recipe])
    new, old = MultiCropAugment(cfg), ReferenceMultiCropAugment(cfg)
    for seed in range(12):
        img = _img(96 + 8 * (seed % 3), 48, seed)
        (g, l), (rg, rl) = new(img, seed), old(img, seed)
        assert g.shape == rg.shape and l.shape == rl.shape
        # same arithmetic in the same memory layout: bit-identical on the CPU
        assert torch.equal(g, rg) and torch.equal(l, rl)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_batched_views_equal_the_per_image_ones(recipe, tmp_path):
    """The trainer's path: uint8 crops from a DataLoader, all views of the batch at once
    (bit-identical on this machine; the tolerance allows other batched kernels elsewhere)."""
    cfg = MultiCropConfig(**RECIPES[recipe])
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        _img(96, 48, 100 + i).save(paths[-1])
    items = [(i, 1000 + 7 * i, i // 2) for i in range(5)]
    aug = MultiCropAugment(cfg)
    loader = torch.utils.data.DataLoader(MultiCropDataset(paths, aug, uint8=True),
                                         batch_sampler=[items], num_workers=0)
    glob_u8, loc_u8, gpar, lpar, ids = next(iter(loader))
    assert glob_u8.dtype == torch.uint8 and gpar.dtype == torch.float64
    assert ids.tolist() == [0, 0, 1, 1, 2]
    glob = finish_views(aug.photometric, glob_u8, gpar, torch.device("cpu"))
    loc = finish_views(aug.photometric, loc_u8, lpar, torch.device("cpu"))
    assert len(glob) == 2 and len(loc) == cfg.local_crops
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in glob + loc)
    old = ReferenceMultiCropAugment(cfg)
    for b, (row, seed, _) in enumerate(items):
        rg, rl = old(old.load(paths[row]), seed)
        for v in range(2):
            torch.testing.assert_close(glob[v][b], rg[v], atol=1e-5, rtol=0)
        for v in range(cfg.local_crops):
            torch.testing.assert_close(loc[v][b], rl[v], atol=1e-5, rtol=0)


def test_skipped_steps_change_nothing():
    """Skipping a step the CPU rows say is a no-op gives the same pixels as running it."""
    cfg = MultiCropConfig(global_size=(32, 16), local_crops=0, jitter_p=0.0, gray_p=0.0,
                          blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)
    v = MultiCropAugment(cfg).crops(_img(64, 32, 0), seed=3)
    plan = batch_plan(v.globals_params)
    assert not any(plan[k] for k in ("gain", "jitter", "gray", "solarize"))
    assert plan["blurred"] == []
    every = {"gain": True, "jitter": True, "offsets": (True,) * 4, "gray": True,
             "blurred": None, "solarize": True}
    ph = PhotometricAugment()
    assert torch.equal(ph(v.globals_u8, v.globals_params, plan),
                       ph(v.globals_u8, v.globals_params, every))
    # the accelerator's way (every step on every view, impulse kernels) = the planned way
    cfg = MultiCropConfig(**RECIPES["paper (scaled down)"])
    v = MultiCropAugment(cfg).crops(_img(64, 32, 1), seed=9)
    for u8, par in ((v.globals_u8, v.globals_params), (v.locals_u8, v.locals_params)):
        torch.testing.assert_close(ph(u8, par, every), ph(u8, par, batch_plan(par)),
                                   atol=1e-6, rtol=0)
    # an unblurred view's kernel is a unit impulse, a blurred one a normalised bump
    cfg = MultiCropConfig(global_size=(32, 16), local_crops=0, blur_p=(1.0, 0.0, 0.0))
    k = MultiCropAugment(cfg).crops(_img(64, 32, 0), seed=3).globals_params[:, KERNEL_START:]
    assert torch.allclose(k.sum(1), torch.ones(2, dtype=k.dtype))
    assert (k[0] > 0).sum() > 1 and (k[1] > 0).sum() == 1


def test_augment_device_option():
    from cion.errors import CionError
    from cion.pretrain.config import PretrainConfig
    from cion.pretrain.trainer import resolve_augment_device

    with pytest.raises(CionError, match="augment_device must be auto, cpu or cuda"):
        PretrainConfig(augment_device="gpu")
    cpu = torch.device("cpu")
    assert resolve_augment_device("auto", cpu) == cpu and resolve_augment_device("cpu", cpu) == cpu
    with pytest.raises(CionError, match="needs training on a CUDA GPU"):
        resolve_augment_device("cuda", cpu)
    # where the per-pixel half runs changes no draw: a run may resume with another choice
    assert PretrainConfig(augment_device="cpu").differences(PretrainConfig()) == []
