"""torchrun with 2 gloo processes gives the same losses (and weights) as 1 process with the same
global batch; also exercises the `cion pretrain` command end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

RECIPE = """
arch: vit_micro
epochs: 1
batch_size: 8
local_crops: 2
global_size: [32, 16]
local_size: [16, 8]
curriculum: [[0, 2]]
out_dim: 128
hidden_dim: 64
bottleneck_dim: 32
warmup_epochs: 0.5
momentum_teacher: 0.5
base_lr: 0.05
freeze_last_layer: 0
num_workers: 0
log_every: 1
tensorboard: false
device: cpu
"""


def _cli(args, nproc):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, "-m", "cion.cli"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "cion.cli"]
    return subprocess.run(cmd + ["pretrain"] + args, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("centering", ["mean", "sinkhorn"])
def test_two_gloo_processes_match_one(tmp_path, centering):
    """Sinkhorn-Knopp normalises over the global batch: its sums must be all-reduced too."""
    from cion.pretrain.toydata import make_toy_manifest

    make_toy_manifest(tmp_path / "data", identities=8, images_per_identity=4, size=(32, 16))
    (tmp_path / "tiny.yaml").write_text(RECIPE + f"centering: {centering}\n")
    common = ["--data", str(tmp_path / "data" / "manifest.parquet"), "--config",
              str(tmp_path / "tiny.yaml"), "--max-steps", "3", "--no-progress", "--seed", "4"]
    one = _cli(common + ["--out", str(tmp_path / "one")], 1)
    assert one.returncode == 0, one.stderr
    two = _cli(common + ["--out", str(tmp_path / "two")], 2)
    assert two.returncode == 0, two.stdout + two.stderr

    la = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    for x, y in zip(la, lb):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * max(1.0, abs(x["loss"]))
    assert la[0]["loss"] != la[2]["loss"]          # the model did train
    # the exported teacher: compared as steps taken from the shared initial weights (the
    # teacher moves by ~(1 - momentum) x the student's steps, far below an absolute tolerance)
    from cion.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig.from_yaml(tmp_path / "tiny.yaml", seed=4, max_steps=0)
    init = pretrain(tmp_path / "data" / "manifest.parquet", cfg, tmp_path / "init", progress=False)
    w0 = load_file(str(init.backbone))
    wa = load_file(str(tmp_path / "one" / "backbone.safetensors"))
    wb = load_file(str(tmp_path / "two" / "backbone.safetensors"))
    da = {k: (wa[k].double() - w0[k].double()) for k in w0}
    db = {k: (wb[k].double() - w0[k].double()) for k in w0}
    moved = sum(d.square().sum() for d in da.values()).sqrt().item()
    apart = sum((da[k] - db[k]).square().sum() for k in da).sqrt().item()
    assert moved > 1e-3                                  # the teacher did follow the student
    assert apart <= 5e-3 * moved
