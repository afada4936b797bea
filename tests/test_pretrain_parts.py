"""Schedules, head, parameter groups, clipping, EMA, collapse monitor, configs, CLI errors, and a
tiny in-process run with bf16 autocast + channels_last on CPU."""
from __future__ import annotations

import contextlib
import json
import math

import numpy as np
from pathlib import Path

import pytest
import torch

from cion.errors import CionError
from cion.pretrain.config import PretrainConfig
from cion.pretrain.head import DINOHead
from cion.pretrain.monitor import CollapseMonitor
from cion.training.schedules import cosine, schedule_values
from cion.pretrain.trainer import clip_gradients, ema_update, param_groups

ROOT = Path(__file__).resolve().parents[1]


def test_schedules():
    cfg = PretrainConfig(epochs=100, batch_size=512, warmup_epochs=10, warmup_teacher_temp=0.02,
                         teacher_temp=0.04, warmup_teacher_temp_epochs=5)
    v0, v10, v100 = (schedule_values(cfg, p) for p in (0.0, 10.0, 100.0))
    assert v0["lr"] == 0.0 and v10["lr"] == pytest.approx(5e-4 * 512 / 256)
    assert v100["lr"] == pytest.approx(1e-6)
    assert schedule_values(cfg, 5.0)["lr"] == pytest.approx(0.5 * 1e-3)
    assert v0["weight_decay"] == pytest.approx(0.04) and v100["weight_decay"] == pytest.approx(0.4)
    assert v0["momentum"] == pytest.approx(0.996) and v100["momentum"] == pytest.approx(1.0)
    assert v0["teacher_temp"] == pytest.approx(0.02) and v10["teacher_temp"] == pytest.approx(0.04)
    assert schedule_values(cfg, 2.5)["teacher_temp"] == pytest.approx(0.03)
    # half-way through the cosine
    assert cosine(55.0, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.5)


def test_head_and_groups():
    head = DINOHead(16, out_dim=40, hidden_dim=32, bottleneck_dim=8)
    assert head(torch.randn(5, 16)).shape == (5, 40)
    w = head.last_layer.v / head.last_layer.v.norm(dim=1, keepdim=True)
    assert not head.last_layer.g.requires_grad and torch.allclose(head.last_layer.g, torch.ones(40))
    # logits are dot products of a unit vector with unit rows: |logit| <= 1
    assert head(torch.randn(5, 16)).abs().max() <= 1 + 1e-5 and w.shape == (40, 8)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    reg, noreg = param_groups(model)
    assert [p.shape for p in reg["params"]] == [(4, 4)]
    assert len(noreg["params"]) == 3 and noreg["weight_decay"] == 0.0


def test_clip_and_ema():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_gradients([a, b], 1.0)   # per parameter: a is clipped to norm 1, b (norm 0.5) untouched
    assert a.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.3, 0.4]))
    t, s = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    t0 = [p.clone() for p in t.parameters()]
    ema_update(t, s, 0.9)
    for p, p0, q in zip(t.parameters(), t0, s.parameters()):
        assert torch.allclose(p, 0.9 * p0 + 0.1 * q)


def test_collapse_monitor():
    m = CollapseMonitor(out_dim=1000, patience=3)
    logd = math.log(1000)
    assert all(m.update(3.0, 6.5, 1.5) is None for _ in range(10))          # healthy
    msgs = [m.update(0.999 * logd, logd, 1e-4) for _ in range(4)]          # uniform collapse
    assert msgs[:2] == [None, None] and "uniform" in msgs[2] and msgs[3] is None
    m2 = CollapseMonitor(out_dim=1000, patience=2)
    assert [m2.update(0.01, 0.02, 1e-3) for _ in range(2)][-1].count("one dimension") == 1


def test_all_zoo_recipes_load():
    from cion.models import list_models

    for name in list_models():
        cfg = PretrainConfig.from_yaml(ROOT / "configs" / "pretrain" / f"{name}.yaml")
        assert cfg.arch == name and cfg.curriculum == [[0, 2], [40, 4], [60, 6], [80, 8]]
        assert cfg.batch_size % 8 == 0 and 4 <= cfg.local_crops <= 10
    demo = PretrainConfig.from_yaml(ROOT / "configs" / "pretrain" / "demo_cpu.yaml", epochs=3)
    assert demo.epochs == 3 and demo.device == "cpu"
    r50 = PretrainConfig.from_yaml(ROOT / "configs" / "pretrain" / "resnet50_ibn.yaml")
    assert (r50.batch_size, r50.local_crops) == (960, 8) and r50.lr == pytest.approx(5e-4 * 960 / 256)


def test_config_errors(tmp_path):
    with pytest.raises(CionError, match="unknown option"):
        PretrainConfig.from_dict({"epochz": 3})
    with pytest.raises(CionError, match="HEIGHTxWIDTH"):
        PretrainConfig(global_size="256-128")
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2")
    with pytest.raises(CionError, match="bad.yaml"):
        PretrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(CionError, match="centering"):
        PretrainConfig(centering="median")
    with pytest.raises(CionError, match="augment: unknown option.*jiter"):
        PretrainConfig(augment={"jiter": 0.1})
    with pytest.raises(CionError, match="base_lr must be a number"):
        PretrainConfig(base_lr="fast")
    assert PretrainConfig(base_lr="8e-3").base_lr == 8e-3       # YAML's 8e-3 is a string
    a, b = PretrainConfig(epochs=3), PretrainConfig(epochs=4, max_steps=5)
    assert a.differences(b) == ["epochs", "curriculum"]


def test_head_bn_and_augment_options_reach_the_networks_and_crops(tmp_path):
    from cion import distributed as dist
    from cion.pretrain.trainer import build_networks

    cfg = PretrainConfig(arch="resnet_micro", global_size=(32, 16), local_size=(16, 8), out_dim=64,
                         hidden_dim=32, bottleneck_dim=16, head_bn=True,
                         augment={"gray_p": 1.0, "jitter_p": 0.0, "blur_p": [0, 0, 0]})
    student, teacher, _ = build_networks(cfg, torch.device("cpu"), dist.init("cpu"))
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in student.head.modules()) == 2
    from cion.data.transforms import MultiCropAugment, MultiCropConfig
    from PIL import Image
    aug = MultiCropAugment(MultiCropConfig(global_size=cfg.global_size, local_size=cfg.local_size,
                                           local_crops=1, **cfg.augment))
    img = Image.fromarray((np.random.default_rng(0).random((64, 32, 3)) * 255).astype(np.uint8))
    glob, _ = aug(img, seed=3)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    rgb = glob[0] * std + mean               # gray_p 1: the three channels are equal
    torch.testing.assert_close(rgb[0], rgb[1], atol=1e-5, rtol=0)


def test_channels_last_forward_matches():
    from cion.pretrain.head import MultiCropNet

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    net = MultiCropNet(body, DINOHead(8, 32, 16, 8)).eval()
    views = [torch.randn(2, 3, 16, 8), torch.randn(2, 3, 16, 8), torch.randn(2, 3, 8, 4)]
    ref = net(views)
    net.channels_last = True
    net = net.to(memory_format=torch.channels_last)
    assert ref.shape == (6, 32) and torch.allclose(net(views), ref, atol=1e-5)


def test_bf16_run_and_resume_guard(tmp_path, tiny_pretrain_cfg):
    from cion.pretrain import pretrain
    from cion.models.backbone import load_backbone
    from cion.pretrain.toydata import make_toy_manifest

    df = make_toy_manifest(tmp_path / "data", identities=4, images_per_identity=4, size=(32, 16))
    with _forward_log() as seen:
        r = pretrain(df, tiny_pretrain_cfg(precision="bf16", tensorboard=True), tmp_path / "run",
                     progress=False)
    assert r.steps == 2 and math.isfinite(r.last_loss)
    linear = [dtype for kind, dtype, _ in seen if kind == "Linear"]
    assert linear and all(d == torch.bfloat16 for d in linear)      # the matmuls ran in bf16
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision_used"] == "bf16"
    assert (tmp_path / "run" / "tensorboard").is_dir()
    model = load_backbone("vit_micro", r.backbone, (32, 16))
    assert model(torch.randn(2, 3, 32, 16)).shape == (2, 64)
    with pytest.raises(CionError, match="different options"):
        pretrain(df, tiny_pretrain_cfg(precision="bf16", tensorboard=True, local_crops=3),
                 tmp_path / "run", progress=False)
    with pytest.raises(CionError, match="fp16"):
        pretrain(df, tiny_pretrain_cfg(precision="fp16", tensorboard=True), tmp_path / "run16",
                 progress=False)


def test_channels_last_option_reaches_every_convolution(tmp_path, tiny_pretrain_cfg):
    """``channels_last: true``: every convolution of the training step sees NHWC inputs (and
    ``false``: none does)."""
    from cion.pretrain import pretrain
    from cion.pretrain.toydata import make_toy_manifest

    df = make_toy_manifest(tmp_path / "data", identities=4, images_per_identity=4, size=(32, 16))
    for flag in ("true", "false"):
        with _forward_log() as seen:
            pretrain(df, tiny_pretrain_cfg(arch="resnet_micro", channels_last=flag, max_steps=1),
                     tmp_path / flag, progress=False)
        conv = [nhwc for kind, _, nhwc in seen if kind == "Conv2d" and nhwc is not None]
        assert len(conv) > 10
        assert all(conv) if flag == "true" else not any(conv), flag
        info = json.loads((tmp_path / flag / "config.json").read_text())
        assert info["channels_last"] is (flag == "true")


@contextlib.contextmanager
def _forward_log():
    """Record (module type, output dtype, whether a convolution's input is channels_last, None
    where that is ambiguous) for every module forward under autograd (the training step, not evaluation)."""
    seen = []

    def hook(module, args, output):
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        nhwc = None
        if isinstance(module, torch.nn.Conv2d) and x is not None and x.ndim == 4 \
                and x.shape[1] > 1 and min(x.shape[2:]) > 1:
            nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        seen.append((type(module).__name__, output.dtype, nhwc))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from cion.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--data", str(tmp_path / "missing.parquet"), "--arch", "vit_micro",
              "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "missing.parquet" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
