"""Each fine-tuning mode learns on the synthetic world (tiny ResNet, CPU, seeded, one thread):
MGN raises mAP over its start, Cluster Contrast USL raises mAP over its start without labels,
and UDA (source = another synthetic world with other cameras and people, fine-tuned with labels;
target = the tiny world) raises the target mAP over the source-only model. The supervised
recipe's gain is checked in tests/test_finetune_cli.py. Figures: docs/finetuning.md."""
from __future__ import annotations

import pytest

from cion.finetune.config import FinetuneConfig
from cion.finetune.trainer import finetune

BASE = dict(arch="test_resnet", img_size=[64, 32], batch_size=32, instances=4, optimizer="adam",
            tensorboard=False, device="cpu", num_workers=0, seed=0)
#: Cluster Contrast at the tiny world's scale: 267 images of 20 people, k1 10 instead of 30,
#: 8 iterations per epoch instead of 200, a constant rate
CLUSTER = dict(BASE, iters_per_epoch=8, lr=3e-3, schedule="step", step_size=100, warmup_epochs=0,
               k1=10, eps=0.6, eval_every=0)


def _run(cfg, data, out, **kw):
    report = finetune(FinetuneConfig(**cfg), data, out, progress=False, log=lambda m: None, **kw)
    s = report["scores"]
    print(f"{cfg['mode']}: mAP {s['start']['mAP']:.4f} -> {s['end']['mAP']:.4f}, clusters "
          f"{[c['clusters'] for c in report['clusters']]}")
    return report, s["start"]["mAP"], s["end"]["mAP"]


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    """A backbone fine-tuned with labels on another world (3 other-looking cameras, other
    people, seed 11): the UDA source."""
    from cion.data.synth import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("source_world")
    generate_world(root, WorldConfig(identities=20, videos=6, cameras=3, image_size=(64, 32),
                                     bench_identities=40, seed=11), workers=1, progress=False)
    report, start, end = _run(dict(BASE, mode="supervised", steps=60, warmup_epochs=12, lr=3e-3),
                              root / "market", root / "ft")
    assert end > start + 0.03                     # it learned its own world
    return report["backbone"]


def test_mgn_raises_map(tiny_world, tmp_path, one_torch_thread):
    report, start, end = _run(dict(BASE, mode="mgn", steps=60, warmup_epochs=6, lr=3e-3,
                                   freeze_epochs=1, epochs=60), tiny_world / "market", tmp_path)
    assert end > start + 0.05
    assert report["backbone"] is None and (tmp_path / "model.safetensors").is_file()


def test_usl_raises_map_without_labels(tiny_world, tmp_path, one_torch_thread):
    report, start, end = _run(dict(CLUSTER, mode="usl", epochs=8), tiny_world / "market", tmp_path)
    assert end > start + 0.02
    assert len(report["clusters"]) == 8 and report["num_identities"] == 0


def test_uda_beats_the_source_only_model(tiny_world, tmp_path, source_model, one_torch_thread):
    report, start, end = _run(dict(CLUSTER, mode="uda", epochs=6), tiny_world / "market",
                              tmp_path, source_checkpoint=source_model)
    assert report["checkpoint"] == source_model   # "start" is the source-only model on the target
    assert end > start + 0.015
