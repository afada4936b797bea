"""Exact resume: a run SIGKILLed mid-epoch (twice, once after the curriculum changed K) and
resumed ends with the same weights as an uninterrupted run. Real subprocesses, tiny model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from cion.pretrain.checkpoint import load_training_state

SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from cion.pretrain import PretrainConfig, pretrain
    data, out, kill_at, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    max_steps = int(sys.argv[5]) if sys.argv[5] != "none" else None
    cfg = PretrainConfig(arch="vit_micro", epochs=2, batch_size=8, local_crops=2,
                         global_size=(32, 16), local_size=(16, 8), curriculum=[[0, 2], [1, 4]],
                         out_dim=128, hidden_dim=64, bottleneck_dim=32, warmup_epochs=1,
                         num_workers=workers, max_steps=max_steps, checkpoint_every=3, log_every=1, tensorboard=False,
                         momentum_teacher=0.5, base_lr=0.05, seed=11)
    def killer(rec):
        if rec["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # no clean-up of any kind
    pretrain(data, cfg, out, progress=False, callbacks=[killer])
""")


def _run(data, out, kill_at, workers=0, max_steps=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(out), str(kill_at),
                           str(workers), str(max_steps if max_steps is not None else "none")], env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_and_resume_is_exact(tmp_path):
    from cion.pretrain.toydata import make_toy_manifest

    make_toy_manifest(tmp_path / "data", identities=8, images_per_identity=6, size=(32, 16))
    data = tmp_path / "data" / "manifest.parquet"
    # epoch 0: K=2 -> 6 steps; epoch 1: K=4 -> 4 steps; 10 steps in all
    ref = _run(data, tmp_path / "ref", kill_at=-1, workers=1)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "run"
    first = _run(data, run, kill_at=5)       # mid-epoch 0, last checkpoint after step 3
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert load_training_state(run / "checkpoint.pt")["global_step"] == 3
    second = _run(data, run, kill_at=8)      # epoch 1 (K=4), resumes from the epoch-end checkpoint
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert "resuming" in second.stderr
    state = load_training_state(run / "checkpoint.pt")
    assert state["global_step"] == 6 and state["sampler"]["epoch"] == 1
    assert state["sampler"]["curriculum"] == [[0, 2], [1, 4]]
    last = _run(data, run, kill_at=-1)
    assert last.returncode == 0, last.stderr

    a, b = load_training_state(tmp_path / "ref" / "checkpoint.pt"), load_training_state(run / "checkpoint.pt")
    assert a["global_step"] == b["global_step"] == 10

    def maxdiff(x, y):
        return max((x[k].double() - y[k].double()).abs().max().item() for k in x)

    # weights compared as steps taken from the initial weights: an untrained teacher (or one
    # restored from another step) must not pass; ``moved`` is how far training took them
    init = _run(data, tmp_path / "init", kill_at=-1, max_steps=0)
    assert init.returncode == 0, init.stderr
    w0 = load_file(str(tmp_path / "init" / "backbone.safetensors"))
    wa = load_file(str(tmp_path / "ref" / "backbone.safetensors"))
    wb = load_file(str(run / "backbone.safetensors"))
    moved = maxdiff(wa, w0)
    assert moved > 1e-3
    assert maxdiff(wa, wb) <= 1e-3 * moved
    assert maxdiff(a["student"], b["student"]) <= 1e-3 * moved
    assert maxdiff(a["teacher"], b["teacher"]) <= 1e-3 * moved
    assert (a["center"] - b["center"]).abs().max().item() <= 1e-6
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.allclose(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], atol=1e-9) for i in sa)
    # the metrics log has each step once, with the same losses
    la = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 11))
    assert [r["k"] for r in lb] == [2] * 6 + [4] * 4
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(la, lb)) <= 1e-5
