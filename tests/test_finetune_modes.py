"""Each fine-tuning mode learns on the synthetic world (tiny ResNet, CPU, seeded, one thread),
with exactly the options of the `cion finetune` commands in docs/finetuning.md: MGN raises mAP
over its start, Cluster Contrast USL raises mAP over its start without labels, and UDA (source =
another synthetic world with other cameras and people, fine-tuned with labels; target = the tiny
world) raises the target mAP over the source-only model. The supervised recipe's gain is checked
in tests/test_finetune_cli.py."""
from __future__ import annotations

import pytest

from cion.finetune.cli_stage import build_config
from cion.finetune.trainer import finetune

COMMON = dict(batch_size=32, instances=4, img_size=[64, 32], optimizer="adam", seed=0,
              num_workers=0)
#: Cluster Contrast at the tiny world's scale (267 images of 20 people): k1 10 instead of 30,
#: 8 iterations per epoch instead of 200, a constant rate of 3e-3
CLUSTER_SETS = ["iters_per_epoch=8", "k1=10", "eps=0.6", "eval_every=0", "step_size=100",
                "weight_decay=1e-4", "tensorboard=false"]


def _run(mode, sets, data, out, steps=None, warmup_steps=None, **kw):
    cfg = build_config(mode, "test_resnet", None, sets, steps=steps, warmup_steps=warmup_steps,
                       lr=3e-3, **COMMON)
    report = finetune(cfg, data, out, progress=False, log=lambda m: None, **kw)
    s = report["scores"]
    print(f"{mode}: mAP {s['start']['mAP']:.4f} -> {s['end']['mAP']:.4f}, clusters "
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
    report, start, end = _run("supervised", ["tensorboard=false"], root / "market", root / "ft",
                              steps=60, warmup_steps=6)
    assert end > start + 0.03                     # it learned its own world
    return report["backbone"]


def test_mgn_raises_map(tiny_world, tmp_path, one_torch_thread):
    report, start, end = _run("mgn", ["freeze_epochs=1", "hold_epochs=0", "tensorboard=false"],
                              tiny_world / "market", tmp_path, steps=60, warmup_steps=6)
    assert end > start + 0.03
    assert report["backbone"] is None and (tmp_path / "model.safetensors").is_file()


def test_usl_raises_map_without_labels(tiny_world, tmp_path, one_torch_thread):
    report, start, end = _run("usl", CLUSTER_SETS + ["epochs=8"], tiny_world / "market", tmp_path)
    assert end > start + 0.02
    assert len(report["clusters"]) == 8 and report["num_identities"] == 0


def test_uda_beats_the_source_only_model(tiny_world, tmp_path, source_model, one_torch_thread):
    report, start, end = _run("uda", CLUSTER_SETS + ["epochs=6"], tiny_world / "market", tmp_path,
                              source_checkpoint=source_model)
    assert report["checkpoint"] == source_model   # "start" is the source-only model on the target
    assert end > start + 0.015
