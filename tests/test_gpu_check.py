"""benchmarks/gpu_check.sh --cpu-smoke: the prepared GPU check runs end to end on tiny sizes
(same code paths as on a GPU), so it cannot rot between the rare GPU sessions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke",
                          "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["failed"]
    rows = {(r["section"], r["what"]): r["value"] for r in report["rows"]}
    sections = {s for s, _ in rows}
    assert sections == {"pre-training images/s", "fine-tuning images/s",
                        "feature extraction images/s", "evaluation"}
    measured = [v for (s, w), v in rows.items() if "syncs" not in w]
    assert len(measured) >= 12 and all(isinstance(v, (int, float)) and v > 0 for v in measured)
    for arch in ("resnet_micro", "vit_micro"):
        assert any(arch in w and "real DataLoader" in w for _, w in rows)
        assert any(arch in w and "pre-made tensors" in w for _, w in rows)
    assert any("MGN" in w for _, w in rows) and any("supervised" in w for _, w in rows)
    assert "| section | what | value |" in res.stdout   # the one table


def test_gpu_check_without_gpu_says_so():
    import torch
    if torch.cuda.is_available():
        return
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--cpu-smoke" in res.stderr
