"""The 32 ReIDZoo backbones: build, load an authors'-format checkpoint, parameter counts, forward passes.

One test per model (built once, through ``create_model(name, checkpoint=...)``): a fake authors'
checkpoint with exactly the reference layout (keys, shapes, dtypes of the official teacher,
``shared/reference/reidzoo/<arch>.json``, compacted in ``tests/data``) is written in the real format
and loaded strictly; then the parameter count, the loaded values and forward passes at 256x128 and
128x64 in eval and train mode (plus channels_last for CNNs) are checked.
"""
from __future__ import annotations

import cion.compat  # noqa: F401  (must precede torchvision / timm)

import gc
from pathlib import Path

import pytest
import torch

from cion.errors import CionError
from cion.models import FAMILIES, ZOO, create_model, list_models, model_info
from cion.models.convert import official_to_ours
from fake_checkpoint import load_layouts, write_fake_official_checkpoint

LAYOUTS = load_layouts(Path(__file__).parent / "data" / "reidzoo_layouts.json.gz")
# IBN-a adds no parameters: the plain ResNets' counts (paper Tab. 3)
IBN_PARAMS_M = {"resnet18_ibn": 11.2, "resnet50_ibn": 23.5, "resnet101_ibn": 42.5, "resnet152_ibn": 58.1}
PAPER_WIDTHS = {  # feature widths at 256x128 (the authors' released models)
    "resnet18": 512, "resnet18_ibn": 512, "ghostnet_0_5": 1280, "ghostnet_1_0": 1280, "ghostnet_1_3": 1280,
    "edgenext_x_small": 192, "edgenext_small": 304, "edgenext_base": 584, "repvit_m0_9": 384,
    "repvit_m1_0": 448, "repvit_m1_5": 512, "fastvit_s12": 1024, "fastvit_sa12": 1024, "fastvit_sa24": 1024,
    "convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024, "volo_d1": 384, "volo_d2": 512,
    "volo_d3": 512, "vit_tiny": 192, "vit_small": 384, "vit_base": 768, "swin_tiny": 768, "swin_small": 768,
    "swin_base": 1024}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, oversubscribed OpenMP threads make these
    small forwards 10x slower in wall time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# one model per family gets the (slower) backward check; the train-mode code path is shared in a family
_BACKWARD = {list_models(f)[0] for f in FAMILIES}


def test_registry_lists_32_models_of_10_families():
    names = list_models()
    assert len(names) == 32 and len(set(names)) == 32
    assert len(FAMILIES) == 10
    assert set(names) == set(LAYOUTS), "every zoo name has a reference layout and vice versa"
    assert list_models("vit") == ["vit_tiny", "vit_small", "vit_base"]
    for name in names:
        info = model_info(name)
        assert info["feature_dim"] == PAPER_WIDTHS.get(name, 2048) == LAYOUTS[name]["feature_dim"]
        assert info["teacher_prefix"] == LAYOUTS[name]["teacher_prefix"]
        assert info["params"] == LAYOUTS[name]["num_params_backbone"]
        assert info["recipe"]["local_crops"] >= 1 and info["structure"]
    assert model_info("resnet50_ibn")["recipe"]["batch_size_per_gpu"] == 120


def test_unknown_name_is_a_clear_error():
    with pytest.raises(CionError, match="resnet50_ibn"):
        create_model("resnet50ibn")
    with pytest.raises(ValueError, match="unknown family"):
        list_models("transformer")


def _paper_params_m(name: str):
    entry = ZOO[name]
    return entry.paper_params_m if entry.paper_params_m is not None else IBN_PARAMS_M[name]


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_loads_authors_checkpoint_and_runs(name, tmp_path):
    layout = LAYOUTS[name]
    path = tmp_path / f"{name}.pth"
    written = write_fake_official_checkpoint(layout, path, seed=list_models().index(name))  # reproducible

    model = create_model(name, checkpoint=path)

    # --- strict load: every backbone key landed, values are the teacher's -------------------------
    report = model.checkpoint_report
    derived = [k for k, _, _ in layout["backbone"] if k.endswith("relative_position_index")]
    assert report.prefix == layout["teacher_prefix"]
    assert report.loaded + report.verified == len(layout["backbone"])
    assert report.verified == len(derived)
    assert sorted(report.ignored) == sorted(layout["head_prefix"] + k for k, _, _ in layout["head"])
    mapping = official_to_ours(layout["family"], written)
    state = model.state_dict()
    persistent = [k for k in written if k not in derived]
    assert sorted(mapping[k] for k in persistent) == sorted(state), "file and model keys are the same set"
    for key in persistent:
        assert torch.equal(state[mapping[key]], written[key].to(state[mapping[key]].dtype)), key

    # --- parameters: exactly the authors' count; the paper's Tab. 3 within 1% or its 0.1M rounding ----------------
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == layout["num_params_backbone"]
    paper_m = _paper_params_m(name)
    # the paper counts the ViT's unused 1000-class fc, which the teacher checkpoint does not contain
    counted_m = (n_params + ZOO[name].vit_classifier_params) / 1e6
    assert abs(counted_m - paper_m) <= max(0.01 * paper_m, 0.05), (counted_m, paper_m)

    # --- forward: (B, 3, H, W) -> (B, D) at 256x128 and 128x64, eval and train ---------------------
    dim = model.feature_dim
    assert dim == layout["feature_dim"]
    gen = torch.Generator().manual_seed(0)
    big, small = torch.randn(1, 3, 256, 128, generator=gen), torch.randn(2, 3, 128, 64, generator=gen)
    model.eval()
    with torch.no_grad():
        out_big, out_small = model(big), model(small)
        assert out_big.shape == (1, dim) and out_small.shape == (2, dim)
        assert torch.isfinite(out_big).all() and torch.isfinite(out_small).all()
        if ZOO[name].is_cnn:
            out_cl = model(small.contiguous(memory_format=torch.channels_last))
            torch.testing.assert_close(out_cl, out_small, rtol=1e-4, atol=1e-4)
    model.train()
    out_train = model(small)
    assert out_train.shape == (2, dim) and torch.isfinite(out_train).all()
    if name in _BACKWARD:
        out_train.float().pow(2).mean().backward()          # gradients reach the first layer
        first = next(p for p in model.parameters() if p.requires_grad)
        assert first.grad is not None and torch.isfinite(first.grad).all()
    del model, state, written
    gc.collect()
