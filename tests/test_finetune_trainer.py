"""The fine-tuning trainer: a run SIGKILLed mid-epoch and re-run with the same command ends with
the weights of an uninterrupted run (supervised; Cluster Contrast after a re-clustering, with
its pseudo-labels and memory), and `torchrun --nproc_per_node 2` (gloo) equals one process for
the supervised recipe (global-batch BN and triplet mining). Real subprocesses, tiny model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from cion.finetune.checkpoint import load_state

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, torch
    torch.set_num_threads(1)
    from cion.finetune.config import FinetuneConfig
    from cion.finetune.trainer import finetune
    data, out, kill_at, fields = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    cfg = FinetuneConfig(**fields)
    def killer(rec):
        if rec["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # no clean-up of any kind
    finetune(cfg, data, out, evaluate=False, progress=False, callbacks=[killer],
             log=lambda msg: print(msg, file=sys.stderr))
""")

SUPERVISED = dict(mode="supervised", arch="test_resnet", img_size=[64, 32], epochs=2,
                  batch_size=32, instances=4, optimizer="adam", lr=3e-3, warmup_epochs=0.5,
                  checkpoint_every=3, log_every=1, tensorboard=False, device="cpu", seed=3)
USL = dict(mode="usl", arch="test_resnet", img_size=[64, 32], epochs=3, iters_per_epoch=4,
           batch_size=32, instances=4, optimizer="adam", lr=1e-3, schedule="step", step_size=2,
           warmup_epochs=0, k1=10, eps=0.5, checkpoint_every=3, log_every=1,
           tensorboard=False, device="cpu", seed=5)


def _run(data, out, kill_at, fields, workers=0):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    fields = dict(fields, num_workers=workers)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(out), str(kill_at),
                           json.dumps(fields)], env=env, capture_output=True, text=True,
                          timeout=300)


def _here(data, out, fields):
    """The same run in this process (the uninterrupted reference, or the final resume; the
    latter with the images decoded into memory, which must not change a thing)."""
    from cion.finetune.config import FinetuneConfig
    from cion.finetune.trainer import finetune

    lines = []
    finetune(FinetuneConfig(**dict(fields, num_workers=0)), data, out, evaluate=False,
             progress=False, log=lines.append)
    return "\n".join(lines)


def _maxdiff(x, y):
    assert set(x) == set(y)
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_supervised_sigkill_and_resume_is_exact(tiny_world, tmp_path, one_torch_thread):
    market = tiny_world / "market"          # 267 train images: 7 steps of 32 per epoch
    _here(market, tmp_path / "ref", SUPERVISED)
    run = tmp_path / "run"
    first = _run(market, run, 11, SUPERVISED, workers=1)   # epoch 2, checkpoints at 3, 6, 7, 9
    assert first.returncode == -signal.SIGKILL, first.stderr
    state = load_state(run / "checkpoint.pt")
    assert state["global_step"] == 9 and (state["epoch"], state["step"]) == (1, 2)
    assert "resuming" in _here(market, run, dict(SUPERVISED, in_memory=True))

    a, b = load_state(tmp_path / "ref" / "checkpoint.pt"), load_state(run / "checkpoint.pt")
    assert a["global_step"] == b["global_step"] == 14
    assert _maxdiff(a["model"], b["model"]) <= 1e-6
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.allclose(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], atol=1e-9) for i in sa)
    wa = load_file(str(tmp_path / "ref" / "backbone.safetensors"))
    assert _maxdiff(wa, load_file(str(run / "backbone.safetensors"))) <= 1e-6
    la, lb = _lines(tmp_path / "ref" / "metrics.jsonl"), _lines(run / "metrics.jsonl")
    assert [r["step"] for r in lb] == list(range(1, 15))
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(la, lb)) <= 1e-5
    assert la[0]["lr"] < la[5]["lr"]                  # warm-up, then cosine decay
    assert la[-1]["lr"] < la[5]["lr"]


def test_usl_sigkill_after_reclustering_is_exact(tiny_world, tmp_path, one_torch_thread):
    market = tiny_world / "market"
    _here(market, tmp_path / "ref", USL)
    run = tmp_path / "run"
    first = _run(market, run, 7, USL, workers=1)   # epoch 2 (after its re-clustering), ckpt at 6
    assert first.returncode == -signal.SIGKILL, first.stderr
    state = load_state(run / "checkpoint.pt")
    assert state["global_step"] == 6 and (state["epoch"], state["step"]) == (1, 2)
    assert len(state["clusters"]) == 2 and state["objective"]["labels"] is not None
    log = _here(market, run, USL)
    assert "resuming" in log
    assert log.count("clusters,") == 1                # epoch 3 only: epoch 2's labels restored

    a, b = load_state(tmp_path / "ref" / "checkpoint.pt"), load_state(run / "checkpoint.pt")
    assert a["global_step"] == b["global_step"] == 12
    assert _maxdiff(a["model"], b["model"]) <= 1e-6
    assert _maxdiff(a["objective"]["memory"], b["objective"]["memory"]) <= 1e-6
    assert torch.equal(a["objective"]["labels"], b["objective"]["labels"])
    assert [c["clusters"] for c in a["clusters"]] == [c["clusters"] for c in b["clusters"]]
    la, lb = _lines(tmp_path / "ref" / "metrics.jsonl"), _lines(run / "metrics.jsonl")
    assert [r["step"] for r in lb] == list(range(1, 13))
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(la, lb)) <= 1e-5
    assert [r["lr"] for r in la[:8]] == [1e-3] * 8 and la[8]["lr"] == 1e-4   # x0.1 at epoch 2


RECIPE = """
mode: supervised
arch: test_resnet
img_size: [64, 32]
epochs: 1
batch_size: 16
instances: 4
optimizer: sgd
lr: 0.01
warmup_epochs: 0
sync_bn: true
log_every: 1
tensorboard: false
num_workers: 0
device: cpu
"""


def _torchrun(args, nproc):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "cion.cli"]
    return subprocess.run(cmd + ["finetune"] + args, env=env, capture_output=True, text=True,
                          timeout=300)


def test_two_gloo_processes_match_one(tiny_world, tmp_path, capsys, one_torch_thread):
    """Tolerance 1e-4 (losses, relative) and 1e-4 (weights): the global batch's BN moments are
    summed in float64 across ranks, the triplet mines the all-gathered batch; what remains is
    float summation order (measured: losses 1e-6 apart, weights 6e-5 after 4 SGD steps at lr
    0.01, in the first convolution)."""
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    common = ["--data", str(tiny_world / "market"), "--config", str(tmp_path / "tiny.yaml"),
              "--set", "max_steps=4", "--no-progress", "--no-evaluate", "--seed", "4"]
    from cion.cli import main

    with pytest.raises(SystemExit) as exc:         # one process: here
        main(["finetune", *common, "--out", str(tmp_path / "one")])
    assert exc.value.code == 0, capsys.readouterr().err
    two = _torchrun(common + ["--out", str(tmp_path / "two")], 2)
    assert two.returncode == 0, two.stdout + two.stderr

    la, lb = _lines(tmp_path / "one" / "metrics.jsonl"), _lines(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3, 4]
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and config["sync_bn_used"] is True
    for x, y in zip(la, lb):
        for key in ("loss", "id", "triplet"):
            assert abs(x[key] - y[key]) <= 1e-4 * max(1.0, abs(x[key])), (key, x, y)
    assert la[0]["loss"] != la[3]["loss"]             # the model did train
    wa = load_file(str(tmp_path / "one" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "model.safetensors"))
    print(f"1 vs 2 processes: max loss difference "
          f"{max(abs(x['loss'] - y['loss']) for x, y in zip(la, lb)):.2e}, max weight difference "
          f"{_maxdiff(wa, wb):.2e}")
    assert _maxdiff(wa, wb) <= 1e-4
    ma = load_file(str(tmp_path / "one" / "backbone.safetensors"))
    assert max((ma[k] - wa["backbone." + k]).abs().max().item() for k in ma) == 0


def test_schedules_known_values():
    """The recipes' learning rates at known points (pure functions of the position)."""
    import math

    from cion.finetune.config import FinetuneConfig
    from cion.finetune.trainer import learning_rate
    from cion.training.schedules import warmup_hold_cosine, warmup_step_decay

    # MGN: warm-up from 0.01x over 10 epochs, constant to 30, cosine to 7.7e-7 at 60
    lr = lambda p: warmup_hold_cosine(p, 60, 3.5e-4, 7.7e-7, 10, 0.01, 30)  # noqa: E731
    assert lr(0) == pytest.approx(3.5e-6) and lr(5) == pytest.approx(0.505 * 3.5e-4)
    assert lr(10) == lr(29.9) == pytest.approx(3.5e-4)
    assert lr(45) == pytest.approx(7.7e-7 + 0.5 * (3.5e-4 - 7.7e-7))
    assert lr(60) == pytest.approx(7.7e-7) and lr(70) == pytest.approx(7.7e-7)
    # Cluster Contrast: x0.1 every 20 epochs, one rate per epoch
    assert [warmup_step_decay(e, 3.5e-4, 20) for e in (0, 19.99, 20, 40, 49)] == \
        pytest.approx([3.5e-4, 3.5e-4, 3.5e-5, 3.5e-6, 3.5e-6])
    # supervised: cosine from the end of warm-up
    cfg = FinetuneConfig(lr=4e-4, min_lr=0.0, epochs=120, warmup_epochs=20)
    assert learning_rate(cfg, 70) == pytest.approx(4e-4 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    # --steps scales the epochs of the schedule onto the steps
    cfg = FinetuneConfig(epochs=120, steps=60)
    assert cfg.progress(3, 1, 7, 30) == 60.0


@pytest.mark.parametrize("field, value, message", [
    ("mode", "semi", "must be one of supervised, mgn, usl, uda"),
    ("batch_size", 30, "multiple of instances (4)"),
    ("eps", 0, "eps = 0.0: must be > 0"),
    ("memory_update", "soft", "must be hard or plain"),
    ("precision", "fp8", "must be auto, fp32, bf16 or fp16"),
    ("warmup_factor", 0, "must be in (0, 1]"),
    ("lr", "fast", "lr must be a number"),
    ("device", "gpu", "must be auto, cpu, cuda or cuda:N"),
])
def test_config_names_the_bad_option(field, value, message):
    from cion.errors import CionError
    from cion.finetune.config import FinetuneConfig

    with pytest.raises(CionError) as err:
        FinetuneConfig(**{field: value})
    assert message in str(err.value)


def test_global_batchnorm_is_plain_batchnorm_in_one_process():
    """Outside DDP the CPU SyncBatchNorm is nn.BatchNorm (same outputs, same running stats)."""
    from torch import nn

    from cion.training.collectives import GlobalBatchNorm, _convert

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(4 * 36))
    ref[3].bias.requires_grad_(False)
    conv = _convert(__import__("copy").deepcopy(ref))
    assert isinstance(conv[1], GlobalBatchNorm) and isinstance(conv[3], GlobalBatchNorm)
    assert not conv[3].bias.requires_grad and set(conv.state_dict()) == set(ref.state_dict())
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(conv(x), ref(x), atol=1e-6)
    assert _maxdiff(conv.state_dict(), ref.state_dict()) <= 1e-6


@pytest.mark.parametrize("mode", ["supervised", "mgn", "usl"])
def test_bf16_autocast_with_clipping_runs_every_mode(tiny_world, tmp_path, mode, one_torch_thread):
    """Mixed precision (bf16 autocast, CPU here; GPUs take the same path) and gradient clipping
    after unscaling: every mode runs, its losses are finite, master weights stay fp32."""
    from safetensors.torch import load_file

    from cion.finetune.config import FinetuneConfig
    from cion.finetune.trainer import finetune

    cfg = FinetuneConfig(mode=mode, arch="test_resnet", img_size=[64, 32], batch_size=16,
                         instances=4, optimizer="adam", lr=3e-3, warmup_epochs=0, max_steps=2,
                         iters_per_epoch=2, k1=10, precision="bf16", clip_grad=1.0,
                         tensorboard=False, device="cpu", num_workers=0, log_every=1)
    report = finetune(cfg, tiny_world / "market", tmp_path, evaluate=False, progress=False,
                      log=lambda m: None)
    assert report["precision"] == "bf16" and report["steps"] == 2
    lines = _lines(tmp_path / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    state = load_state(tmp_path / "checkpoint.pt")
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())   # fp32 master weights
    assert load_file(str(tmp_path / "model.safetensors"))
