"""`cion finetune` on unreadable images (docs/robustness.md): a corrupt training image is
replaced by another of its identity (supervised) and listed, and a run interrupted after it
resumes exactly; a truncated target image is an outlier of every epoch (Cluster Contrast USL)
and listed; too many bad training images, or one bad query image, stop the run with one line
and exit status 2. Tiny world, micro ResNet at 64x32, CPU."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cion.cli import main
from cion.finetune.checkpoint import load_state
from cion.finetune.config import FinetuneConfig
from cion.finetune.trainer import finetune, training_rows

SUPERVISED = dict(mode="supervised", arch="resnet_micro", img_size=[64, 32], epochs=1,
                  batch_size=32, instances=4, optimizer="adam", lr=3e-3, warmup_epochs=0,
                  checkpoint_every=3, log_every=1, tensorboard=False, device="cpu", seed=3,
                  num_workers=0)
USL = dict(mode="usl", arch="resnet_micro", img_size=[64, 32], epochs=2, iters_per_epoch=2,
           batch_size=32, instances=4, optimizer="adam", lr=1e-3, warmup_epochs=0, k1=10,
           eps=0.5, log_every=1, tensorboard=False, device="cpu", seed=5, num_workers=0)
FAST = ["--arch", "resnet_micro", "--img-size", "64x32", "--seed", "0", "--batch-size", "32",
        "--workers", "0", "--no-progress", "--set", "tensorboard=false", "--device", "cpu"]


def _corrupt(path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 20)


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def market(tiny_world, tmp_path):
    """A private copy of the tiny world's Market-layout set (its images may be damaged)."""
    return shutil.copytree(tiny_world / "market", tmp_path / "market")


def _train(market, fields):
    """(paths, labels) of the training rows the trainer uses."""
    from cion.data.readers import read_dataset

    paths, labels, _, _ = training_rows(read_dataset("market1501", market),
                                        FinetuneConfig(**fields).check())
    return paths, labels


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    _, err = capsys.readouterr()
    return exc.value.code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cion: error:") and "Traceback" not in err, err
    return lines[0]


class _Stop(Exception):
    pass


def _stop_at(step):
    def cb(rec):
        if rec["step"] == step:
            raise _Stop                      # the run dies between two checkpoints
    return cb


def test_supervised_one_corrupt_image_is_replaced_listed_and_resumes_exactly(
        market, tmp_path, one_torch_thread):
    from cion.data.sampler import IdentityBatchSampler

    paths, labels = _train(market, SUPERVISED)            # 267 images: 7 steps of 32
    sampler = IdentityBatchSampler(labels, 32, [[0, 4]], SUPERVISED["seed"])
    batches = [[int(r) for r, _, _ in b] for b in sampler]
    # an image first drawn in the last step, after the interruption at step 4 and the worker's
    # read-ahead (2 batches): it is replaced in the resumed part only
    early = {r for b in batches[:6] for r in b}
    row = next(r for r in batches[6] if r not in early)
    _corrupt(Path(paths[row]))

    lines = []
    ref = finetune(FinetuneConfig(**SUPERVISED), market, tmp_path / "ref", evaluate=False,
                   progress=False, log=lines.append)
    assert ref["steps"] == 7 and ref["bad_images"]["count"] == 1
    listed = (tmp_path / "ref" / "bad_images.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].split("\t")[0] == paths[row]
    assert "cannot identify" in listed[0]
    assert any("1 unreadable training image(s) were replaced" in ln for ln in lines)

    run = tmp_path / "run"                                # one DataLoader worker, killed at 4
    with pytest.raises(_Stop):
        finetune(FinetuneConfig(**dict(SUPERVISED, num_workers=1)), market, run, evaluate=False,
                 progress=False, log=lambda m: None, callbacks=[_stop_at(4)])
    assert load_state(run / "checkpoint.pt")["global_step"] == 3
    assert not (run / "bad_images.txt").exists()          # not drawn before the interruption
    lines = []
    finetune(FinetuneConfig(**SUPERVISED), market, run, evaluate=False, progress=False,
             log=lines.append)
    assert any("resuming" in ln for ln in lines)
    a, b = load_state(tmp_path / "ref" / "checkpoint.pt"), load_state(run / "checkpoint.pt")
    assert a["global_step"] == b["global_step"] == 7
    assert max((a["model"][k].double() - b["model"][k].double()).abs().max().item()
               for k in a["model"]) <= 1e-6
    assert (run / "bad_images.txt").read_text() == (tmp_path / "ref" / "bad_images.txt").read_text()


def test_usl_truncated_target_image_is_an_outlier_and_listed(market, tmp_path, one_torch_thread):
    paths, _ = _train(market, USL)
    row = 17
    _truncate(Path(paths[row]))
    out = tmp_path / "usl"
    # in_memory: the image fails once, at decoding, and is still an outlier of every epoch
    for fields, where in ((USL, out), (dict(USL, in_memory=True), tmp_path / "usl_mem")):
        report = finetune(FinetuneConfig(**fields), market, where, evaluate=False,
                          progress=False, log=lambda m: None)
        assert report["steps"] == 4 and report["bad_images"]["count"] == 1
        listed = (where / "bad_images.txt").read_text().splitlines()
        assert len(listed) == 1 and listed[0].startswith(paths[row] + "\t")
        assert "truncated" in listed[0]
        assert [c["unreadable"] for c in report["clusters"]] == [1, 1]
        assert all(c["images"] == len(paths) and c["clusters"] > 0 for c in report["clusters"])
        labels = load_state(where / "checkpoint.pt")["objective"]["labels"].numpy()
        assert len(labels) == len(paths) and labels[row] == -1
        assert (labels >= 0).sum() > len(paths) // 2          # the rest is clustered as usual
    a, b = load_state(out / "checkpoint.pt"), load_state(tmp_path / "usl_mem" / "checkpoint.pt")
    assert torch.equal(a["objective"]["labels"], b["objective"]["labels"])


@pytest.mark.parametrize("mode", ["supervised", "usl"])
def test_too_many_bad_training_images_stop_with_one_line(market, tmp_path, capsys, mode,
                                                         one_torch_thread):
    paths, _ = _train(market, dict(SUPERVISED, mode=mode))
    bad = np.random.default_rng(0).choice(len(paths), 14, replace=False)     # ~5%
    for r in bad:
        _corrupt(Path(paths[r]))
    out = tmp_path / "run"
    extra = ["--set", "iters_per_epoch=2", "--set", "k1=10"] if mode == "usl" else []
    code, err = _cli(["finetune", "--data", market, "--out", out, "--mode", mode, "--steps", 7,
                      "--no-evaluate", *FAST, *extra], capsys)
    line = _one_line(err)
    assert code == 2 and "finetune stopped: " in line and f"of {len(paths)} images" in line
    assert "allowed 1% (--max-bad-share)" in line and str(out / "bad_images.txt") in line
    listed = [ln.split("\t")[0] for ln in (out / "bad_images.txt").read_text().splitlines()]
    assert len(listed) >= 3 and set(listed) <= {paths[r] for r in bad}
    if mode == "usl":                                     # extraction sees all of them at once
        assert len(listed) == 14
    code, err = _cli(["finetune", "--data", market, "--out", tmp_path / "r2", "--mode", mode,
                      "--max-bad-share", 1.5, *FAST], capsys)
    assert code == 2 and "--max-bad-share 1.5" in _one_line(err)
    assert not (tmp_path / "r2").exists()


def test_unreadable_query_image_stops_evaluation_with_one_line(market, tmp_path, capsys,
                                                                one_torch_thread):
    query = sorted((market / "query").iterdir())[3]
    query.write_bytes(b"")
    code, err = _cli(["finetune", "--data", market, "--out", tmp_path / "run", "--steps", 2,
                      *FAST], capsys)
    line = _one_line(err)
    assert code == 2 and f"1 query / gallery image(s) cannot be read: {query} (empty file)" in line
    assert "--no-evaluate" in line
