"""Checkpoint safety and strictness: allow-listed unpickling, listed mismatches, safetensors round trips."""
from __future__ import annotations

import cion.compat  # noqa: F401  (must precede torchvision / timm)

import argparse
import builtins
import os
from pathlib import Path

import pytest
import torch

from cion.errors import CionError
from cion.models import create_model
from cion.models.checkpoint import (CheckpointMismatchError, UnsafeCheckpointError,
                                    read_backbone_file, read_torch_checkpoint, save_backbone)
from cion.models.factory import convert_official
from fake_checkpoint import load_layouts, write_fake_official_checkpoint

LAYOUTS = load_layouts(Path(__file__).parent / "data" / "reidzoo_layouts.json.gz")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def official_r18ibn(tmp_path_factory):
    """A fake authors' resnet18_ibn checkpoint: (path, teacher backbone tensors, full object)."""
    path = tmp_path_factory.mktemp("ckpt") / "ResNet18_IBN.pth"
    written = write_fake_official_checkpoint(LAYOUTS["resnet18_ibn"], path, seed=3)
    return path, written


def _touch(marker):
    Path(marker).write_text("code from the checkpoint ran")
    return marker


class _CallsModuleFunction:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


class _CallsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _tampered(tmp_path, payload):
    """A checkpoint in the authors' shape with one extra pickled object in it."""
    path = tmp_path / "tampered.pth"
    teacher = {"module.backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}
    torch.save({"teacher": teacher, "epoch": 1, "args": argparse.Namespace(arch="resnet18_ibn"),
                "extra": payload}, path)
    return path


@pytest.mark.parametrize("kind", ["module_function", "builtins_exec", "os_getcwd"])
def test_tampered_pickle_is_refused_and_never_executed(tmp_path, kind):
    marker = tmp_path / "marker.txt"
    if kind == "module_function":
        payload, refused = _CallsModuleFunction(marker), "_touch"
    elif kind == "builtins_exec":
        payload, refused = _CallsExec(marker), "exec"
    else:
        class _Cwd:
            def __reduce__(self):
                return (os.getcwd, ())
        payload, refused = _Cwd(), "getcwd"
    path = _tampered(tmp_path, payload)
    with pytest.raises(UnsafeCheckpointError) as err:
        create_model("resnet18_ibn", checkpoint=path)
    message = str(err.value)
    assert str(path) in message and "allow-list" in message and refused in message
    assert "weights_only=True" in message
    assert not marker.exists(), "the pickle's code must never run"


def test_namespace_is_the_only_addition_to_the_allow_list(tmp_path):
    path = tmp_path / "ns.pth"
    torch.save({"args": argparse.Namespace(arch="vit_small", lr=5e-4)}, path)
    assert read_torch_checkpoint(path)["args"].arch == "vit_small"
    path2 = tmp_path / "other.pth"
    torch.save({"args": argparse.ArgumentParser}, path2)   # a class that is not Namespace
    with pytest.raises(UnsafeCheckpointError, match="ArgumentParser"):
        read_torch_checkpoint(path2)


def test_official_loads_teacher_not_student(official_r18ibn):
    path, written = official_r18ibn
    obj = read_torch_checkpoint(path)
    assert set(obj) == {"student", "teacher", "optimizer", "epoch", "args", "Loss", "fp16_scaler"}
    model = create_model("resnet18_ibn", checkpoint=path)
    sd = model.state_dict()
    assert torch.equal(sd["layer1.0.bn1.IN.weight"], written["layer1.0.bn1.IN.weight"])
    student = obj["student"]["module.backbone.layer1.0.bn1.IN.weight"]
    assert not torch.equal(sd["layer1.0.bn1.IN.weight"], student)
    # the student can be asked for explicitly
    from cion.models.checkpoint import load_official_checkpoint
    report = load_official_checkpoint(model, path, "resnet18_ibn", which="student")
    assert report.loaded == 132 and torch.equal(model.state_dict()["layer1.0.bn1.IN.weight"], student)


def _resave(src, dst, edit):
    obj = read_torch_checkpoint(src)
    edit(obj["teacher"])
    torch.save(obj, dst)
    return dst


def test_mismatches_are_listed_and_nothing_is_loaded(tmp_path, official_r18ibn):
    path, _ = official_r18ibn
    p = "module.backbone."

    def edit(t):
        del t[p + "layer2.1.conv2.weight"]                          # missing
        t[p + "layer9.0.conv1.weight"] = torch.zeros(3)               # unexpected
        t[p + "fc.weight"] = torch.zeros(1000, 512)                   # unexpected (a classifier)
        t[p + "bn1.weight"] = torch.zeros(65)                         # wrong shape
    bad = _resave(path, tmp_path / "bad.pth", edit)
    model = create_model("resnet18_ibn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        from cion.models.checkpoint import load_checkpoint
        load_checkpoint(model, bad, "resnet18_ibn")
    msg = str(err.value)
    for needle in ("layer2.1.conv2.weight", "layer9.0.conv1.weight", "fc.weight", "bn1.weight: file [65] vs model [64]",
                   "model keys missing from the file (1)", "nothing was loaded"):
        assert needle in msg, needle
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plain_resnet_checkpoint_does_not_fit_ibn(tmp_path):
    path = tmp_path / "ResNet18.pth"
    write_fake_official_checkpoint(LAYOUTS["resnet18"], path, teacher_only=True)
    with pytest.raises(CheckpointMismatchError, match=r"layer1\.0\.bn1\.IN\.weight"):
        create_model("resnet18_ibn", checkpoint=path)


def test_swin_index_buffer_is_verified(tmp_path):
    path = tmp_path / "swin.pth"
    write_fake_official_checkpoint(LAYOUTS["swin_tiny"], path, teacher_only=True)
    obj = read_torch_checkpoint(path)
    key = "backbone.layers.0.blocks.1.attn.relative_position_index"
    obj["teacher"][key] = obj["teacher"][key].flip(0)
    torch.save(obj, path)
    with pytest.raises(CheckpointMismatchError, match="relative_position_index"):
        create_model("swin_tiny", checkpoint=path)


def test_bare_state_dict_and_missing_file(tmp_path, official_r18ibn):
    path, written = official_r18ibn
    teacher = read_torch_checkpoint(path)["teacher"]
    bare = tmp_path / "teacher_only.pth"
    torch.save(teacher, bare)
    model = create_model("resnet18_ibn", checkpoint=bare)
    assert torch.equal(model.state_dict()["conv1.weight"], written["conv1.weight"])
    with pytest.raises(CionError, match="does not exist"):
        create_model("resnet18_ibn", checkpoint=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CionError, match="cannot read"):
        create_model("resnet18_ibn", checkpoint=junk)


def test_convert_then_safetensors_round_trip(tmp_path, official_r18ibn):
    path, written = official_r18ibn
    out = tmp_path / "r18ibn.safetensors"
    report = convert_official(path, "resnet18_ibn", out)
    assert report.loaded == 132 and len(report.ignored) == 8
    tensors, meta = read_backbone_file(out)
    assert meta["format"] == "cion-backbone" and meta["arch"] == "resnet18_ibn" and meta["feature_dim"] == "512"
    assert meta["source"] == path.name and meta["source_epoch"] == "100"
    model = create_model("resnet18_ibn", checkpoint=out)
    for key, value in written.items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(CionError, match="holds a 'resnet18_ibn' backbone"):
        create_model("resnet18", checkpoint=out)
    renamed = tmp_path / "weights.bin"                      # recognised by content, not by suffix
    renamed.write_bytes(out.read_bytes())
    assert create_model("resnet18_ibn", checkpoint=renamed).checkpoint_report.format == "safetensors"
    # our own model -> file -> model is exact, including BN buffers
    again = tmp_path / "again.safetensors"
    save_backbone(model, again)
    twin = create_model("resnet18_ibn", checkpoint=again)
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", ["vit_tiny", "volo_d1"])
def test_position_embedding_is_resampled_for_another_build_size(tmp_path, name):
    """A 256x128 backbone loaded into a model built for 128x64 equals the 256x128 model run at 128x64."""
    big = create_model(name).eval()
    path = save_backbone(big, tmp_path / f"{name}.safetensors")
    small = create_model(name, checkpoint=path, img_size=(128, 64)).eval()
    assert small.checkpoint_report.meta["resampled"], "the report says the embedding was resampled"
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(x), rtol=1e-5, atol=1e-5)
