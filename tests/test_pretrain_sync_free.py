"""Sync-free training steps: statistics stay tensors between log steps, the NaN check still
stops a run (naming the step), metrics and history still hold floats."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cion.errors import CionError
from cion.pretrain.trainer import PendingLosses


def test_pending_losses_name_the_first_bad_step():
    pending = PendingLosses()
    for step, v in ((5, 1.0), (6, 2.0)):
        pending.add(step, torch.tensor(v))
    pending.check()                                   # all finite: nothing happens, emptied
    assert pending.values == [] and pending.steps == []
    for step, v in ((7, 1.5), (8, math.nan), (9, math.inf)):
        pending.add(step, torch.tensor(v))
    with pytest.raises(CionError, match="loss is nan at step 8"):
        pending.check()


def test_callbacks_get_device_tensors_logs_get_floats(tmp_path, tiny_pretrain_cfg):
    from cion.pretrain import pretrain
    from cion.pretrain.toydata import make_toy_manifest

    df = make_toy_manifest(tmp_path / "data", identities=6, images_per_identity=4, size=(32, 16))
    seen = []
    result = pretrain(df, tiny_pretrain_cfg(epochs=3, max_steps=4, log_every=3), tmp_path / "run",
                      progress=False, callbacks=[seen.append], log=lambda msg: None)
    assert [r["step"] for r in seen] == [1, 2, 3, 4]
    assert all(isinstance(r["loss"], torch.Tensor) and r["loss"].ndim == 0 for r in seen)
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 3, 4]      # first, every 3rd, last
    assert all(isinstance(r[k], float) for r in logged for k in ("loss", "kl", "teacher_entropy"))
    assert [h["loss"] for h in result.history] == [r["loss"] for r in logged]
    assert logged[1]["loss"] == pytest.approx(float(seen[2]["loss"]))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["augment_device_used"] == "cpu"
