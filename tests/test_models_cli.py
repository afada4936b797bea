"""`cion zoo list | info | convert | export` end to end on small models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cion.cli import main
from cion.errors import CionError
from cion.models import create_model
from fake_checkpoint import load_layouts, write_fake_official_checkpoint

LAYOUTS = load_layouts(Path(__file__).parent / "data" / "reidzoo_layouts.json.gz")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_zoo_list_and_info(capsys):
    code, out, _ = _run(["zoo", "list"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 33 and lines[1].startswith("resnet18 ")
    assert any(ln.startswith("repvit_m0_9") and ln.rstrip().endswith("yes") for ln in lines)
    code, out, _ = _run(["zoo", "list", "--family", "swin"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 4
    code, out, _ = _run(["zoo", "info", "vit_small", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["feature_dim"] == 384 and info["teacher_prefix"] == "module.backbone."
    assert "ICS" in info["structure"]
    code, _, err = _run(["zoo", "info", "vit_smal"], capsys)
    assert code == 2 and "vit_small" in err and len(err.strip().splitlines()) == 1


def test_zoo_convert_and_export(tmp_path, capsys):
    src = tmp_path / "RepViT_m0_9.pth"
    written = write_fake_official_checkpoint(LAYOUTS["repvit_m0_9"], src, seed=5)
    out = tmp_path / "repvit.safetensors"
    code, stdout, err = _run(["zoo", "convert", str(src), "--arch", "repvit_m0_9", "--out", str(out)], capsys)
    assert code == 0, err
    assert "loaded 699 backbone tensors" in stdout and out.exists()
    model = create_model("repvit_m0_9", checkpoint=out)
    assert torch.equal(model.state_dict()["stem.conv1.c.weight"], written["features.0.0.c.weight"])

    code, _, err = _run(["zoo", "convert", str(src), "--arch", "repvit_m1_0", "--out", str(tmp_path / "x.safetensors")],
                        capsys)
    assert code == 2 and "does not match repvit_m1_0" in err and "shape mismatches" in err
    assert not (tmp_path / "x.safetensors").exists()

    onnx_path = tmp_path / "repvit.onnx"
    code, stdout, err = _run(["zoo", "export", "repvit_m0_9", "--checkpoint", str(out), "--onnx", str(onnx_path),
                              "--img-size", "128x64"], capsys)
    assert code == 0, err
    assert "onnxruntime max |diff|" in stdout and onnx_path.stat().st_size > 100_000


def test_micro_models_are_registered_beside_the_zoo_and_old_names_work(tmp_path, capsys):
    from cion.models import list_models, model_info
    from cion.models.backbone import build_backbone, load_backbone
    from cion.models.checkpoint import save_backbone

    assert len(list_models()) == 32 and "resnet_micro" not in list_models()
    assert list_models(include_micro=True)[-2:] == ["resnet_micro", "vit_micro"]
    code, out, _ = _run(["zoo", "list", "--all"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 35
    assert lines[-2].startswith("resnet_micro ") and lines[-1].startswith("vit_micro ")
    info = model_info("test_vit")                          # the old name resolves
    assert info["name"] == "vit_micro" and info["micro"] and info["reported_mAP"] is None
    # same seed, same initialisation under either name (the demo's figures depend on it)
    torch.manual_seed(3)
    old = build_backbone("test_resnet", (64, 32)).state_dict()
    torch.manual_seed(3)
    new = build_backbone("resnet_micro", (64, 32))
    assert all(torch.equal(old[k], v) for k, v in new.state_dict().items())
    assert sum(p.numel() for p in new.parameters()) == model_info("resnet_micro")["params"]
    # a file written under the old name loads under the new one, and vice versa
    path = save_backbone(new, tmp_path / "old.safetensors", {"arch": "test_resnet"})
    again = load_backbone("resnet_micro", path, (64, 32))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in new.state_dict().items())
    with pytest.raises(CionError, match="holds a 'test_resnet' backbone"):
        load_backbone("vit_micro", path, (64, 32))
