"""`cion finetune`: the supervised BNNeck recipe end to end on the tiny world from a random and
from a pre-training backbone, the written files, Market junk / distractors kept out of the
classes, and one-line user errors with exit status 2 and nothing written in --out (bad options,
mode / arch mismatch, a single identity, uda without a source checkpoint, an eps that leaves
every image an outlier)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from cion.cli import main

SIZE = (64, 32)
FAST = ["--arch", "test_resnet", "--img-size", "64x32", "--lr", "3e-3", "--warmup-steps", "6",
        "--seed", "0", "--optimizer", "adam", "--batch-size", "32", "--workers", "0",
        "--no-progress", "--set", "tensorboard=false"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def pretraining_backbone(path, seed=1):
    """A backbone.safetensors as cion pretrain writes it (save_backbone of the teacher backbone)."""
    from cion.models.backbone import build_backbone
    from cion.models.checkpoint import save_backbone

    torch.manual_seed(seed)
    model = build_backbone("test_resnet", SIZE)
    save_backbone(model, path, {"arch": "test_resnet", "step": 0, "source": "cion pretrain (teacher)"})
    return model


def test_finetune_from_random_init(tiny_world, tmp_path, capsys, one_torch_thread):
    from safetensors import safe_open

    from cion.data.readers import read_market1501
    from cion.models.backbone import build_backbone, load_backbone
    from cion.evaluation.retrieval import zero_shot_map

    market, out = tiny_world / "market", tmp_path / "ft"
    code, stdout, err = run_cli(["finetune", "--data", market, "--out", out, "--steps", 60, *FAST],
                                capsys)
    assert code == 0, err
    assert "start" in stdout and "Rank-1" in stdout and "backbone ->" in stdout

    report = json.loads((out / "finetune.json").read_text())
    before, after = report["scores"]["start"], report["scores"]["end"]
    print(f"mAP {before['mAP']:.4f} -> {after['mAP']:.4f}, rank-1 {before['rank1']:.4f} -> "
          f"{after['rank1']:.4f} ({report['seconds']})")
    assert after["mAP"] > before["mAP"] + 0.03
    assert {"mAP", "rank1", "mINP"} <= set(before) and {"mAP", "rank1", "mINP"} <= set(after)
    assert report["mode"] == "supervised" and report["arch"] == "test_resnet"
    assert report["checkpoint"] is None and report["steps"] == 60
    assert report["config"]["steps"] == 60 and report["config"]["img_size"] == list(SIZE)
    train = read_market1501(market).train
    assert report["identities"] == sorted(set(train.identity[train.identity > 0].tolist()))
    assert report["num_images"] == int((train.identity > 0).sum())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r.get("kind") != "eval"]
    assert steps[-1]["step"] == 60 and steps[-1]["lr"] < steps[0]["lr"]   # cosine decay

    path = out / "backbone.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["arch"] == "test_resnet" and f.metadata()["mode"] == "supervised"
        assert set(f.keys()) == set(build_backbone("test_resnet", SIZE).state_dict())
    again = zero_shot_map(load_backbone("test_resnet", path, SIZE), market, SIZE)
    assert again == pytest.approx({k: after[k] for k in again}, abs=1e-6)
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.pt").is_file()


def test_finetune_from_pretraining_backbone(tiny_world, tmp_path, capsys, one_torch_thread):
    from cion.evaluation.retrieval import zero_shot_map

    market, ckpt, out = tiny_world / "market", tmp_path / "backbone.safetensors", tmp_path / "ft"
    start = pretraining_backbone(ckpt)
    code, stdout, err = run_cli(["finetune", "--data", market, "--out", out, "--checkpoint", ckpt,
                                 "--steps", 8, *FAST], capsys)
    assert code == 0, err
    report = json.loads((out / "finetune.json").read_text())
    assert report["checkpoint"] == str(ckpt)
    # the "before" score is the pre-trained backbone's: its weights were loaded, not a random init
    start_map = zero_shot_map(start, market, SIZE)
    assert {k: report["scores"]["start"][k] for k in start_map} == pytest.approx(start_map, abs=1e-6)

    code, _, err = run_cli(["finetune", "--data", market, "--out", tmp_path / "vit", "--checkpoint",
                            ckpt, "--steps", 8, *FAST[2:], "--arch", "test_vit"], capsys)
    assert code == 2 and "holds a 'test_resnet' backbone" in err


def test_market_junk_and_distractors_are_not_classes(tiny_world, tmp_path, capsys, one_torch_thread):
    market = tmp_path / "market"
    shutil.copytree(tiny_world / "market", market)
    train = market / "bounding_box_train"
    image = sorted(train.iterdir())[0]
    for name in ("0000_c1s1_000001_01.jpg", "0000_c2s1_000002_01.jpg", "-1_c1s1_000003_01.jpg"):
        shutil.copy(image, train / name)
    out = tmp_path / "ft"
    code, stdout, err = run_cli(["finetune", "--data", market, "--out", out, "--steps", 3,
                                 "--no-evaluate", *FAST], capsys)
    assert code == 0, err
    report = json.loads((out / "finetune.json").read_text())
    assert "scores" not in report and "start" not in stdout
    assert min(report["identities"]) >= 1 and len(report["identities"]) == 20
    assert (out / "backbone.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/nope.safetensors"], "--checkpoint {tmp}/nope.safetensors does not exist"),
    (["--img-size", "64by32"], "--img-size must look like HEIGHTxWIDTH"),
    (["--arch", "test_resnt"], "Did you mean test_resnet"),
    (["--data", "{world}"], "expected Market-1501 folders"),
    (["--out", "{tmp}/file.txt/sub"], "is not writable"),
    (["--optimizer", "rmsprop"], "optimizer"),
    (["--set", "lr"], "expected KEY=VALUE"),
    (["--set", "epsilon=0.5"], "unknown option(s) ['epsilon']"),
    (["--mode", "mgn", "--arch", "test_vit"], "--mode mgn does not fit --arch test_vit"),
    (["--mode", "uda"], "--mode uda needs --source-checkpoint"),
    (["--data", "{one}", "--dataset", "folder"], "has 1 identity"),
    (["--mode", "usl", "--set", "eps=0.001", "--set", "k1=10", "--set", "epochs=1",
      "--set", "iters_per_epoch=1"], "leaves every one of the 267 training images an outlier"),
])
def test_user_errors_are_one_line(tiny_world, tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("not a directory")
    one = tmp_path / "one"                      # a folder dataset whose train split has 1 person
    for split, ident in (("train", 5), ("query", 5), ("gallery", 5)):
        (one / split / str(ident)).mkdir(parents=True)
        for src in sorted((tiny_world / "market" / "query").iterdir())[:3]:
            shutil.copy(src, one / split / str(ident) / src.name)
    fill = {"tmp": tmp_path, "world": tiny_world, "one": one}
    base = ["finetune", "--data", tiny_world / "market", "--out", tmp_path / "ft", "--steps", 2, *FAST]
    code, _, err = run_cli(base + [a.format(**fill) for a in args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cion: error:"), err
    assert message.format(**fill) in lines[0]
    assert not (tmp_path / "ft").exists() or not any((tmp_path / "ft").iterdir())


def test_missing_checkpoint_in_a_subprocess(tiny_world, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cion.cli", "finetune", "--data", str(tiny_world / "market"),
         "--arch", "test_resnet", "--checkpoint", str(tmp_path / "missing.safetensors"),
         "--out", str(tmp_path / "ft")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "missing.safetensors does not exist" in proc.stderr


def test_folder_dataset_keeps_identity_zero(tiny_world, tmp_path, capsys, one_torch_thread):
    """Outside Market-1501, identity 0 is an ordinary class (MSMT17 numbers its people from 0)."""
    from cion.data.readers import read_market1501

    ds, root = read_market1501(tiny_world / "market"), tmp_path / "folder"
    for split, df in (("train", ds.train), ("query", ds.query), ("gallery", ds.gallery)):
        for rel, ident in zip(df.path, df.identity):
            ident = ident - 1 if split == "train" else ident          # train ids 0..
            (root / split / str(ident)).mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_world / "market" / rel, root / split / str(ident) / rel.split("/")[-1])
    out = tmp_path / "ft"
    code, _, err = run_cli(["finetune", "--data", root, "--dataset", "folder", "--out", out,
                            "--steps", 4, *FAST], capsys)
    assert code == 0, err
    report = json.loads((out / "finetune.json").read_text())
    assert report["dataset"] == "folder" and report["identities"][0] == 0
    assert len(report["identities"]) == 20 and report["scores"]["end"]["mAP"] > 0


def test_recipes_load_with_the_papers_numbers():
    """configs/finetune/: every recipe validates; the numbers the paper's protocols name."""
    from pathlib import Path

    from cion.finetune.cli_stage import build_config

    root = Path(__file__).resolve().parents[1] / "configs" / "finetune"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert names == ["mgn_market1501", "mgn_msmt17", "supervised_market1501", "supervised_msmt17",
                     "uda_market1501_to_msmt17", "uda_msmt17_to_market1501", "usl_market1501",
                     "usl_msmt17"]
    cfg = {n: build_config(None, None, root / f"{n}.yaml") for n in names}
    assert all(cfg[n].mode == n.split("_")[0] for n in names)
    mgn = cfg["mgn_market1501"]
    assert (mgn.img_size, mgn.epochs, mgn.lr, mgn.freeze_epochs, mgn.hold_epochs,
            mgn.batch_size, mgn.instances) == ((384, 128), 60, 3.5e-4, 10, 30, 64, 16)
    for n, eps, iters in (("usl_market1501", 0.6, 200), ("usl_msmt17", 0.7, 400),
                          ("uda_msmt17_to_market1501", 0.6, 200),
                          ("uda_market1501_to_msmt17", 0.7, 400)):
        c = cfg[n]
        assert (c.eps, c.iters_per_epoch, c.k1, c.k2, c.temperature, c.memory_momentum,
                c.memory_update, c.step_size, c.epochs) == (eps, iters, 30, 6, 0.05, 0.2, "hard",
                                                            20, 50)
    sup = cfg["supervised_market1501"]
    assert (sup.optimizer, sup.epochs, sup.warmup_epochs, sup.batch_size, sup.instances) == \
        ("sgd", 120, 20, 64, 4)
    # named options and --set override a recipe, --set last
    c = build_config(None, "test_resnet", root / "usl_market1501.yaml", ["eps=0.5"], lr=1e-3)
    assert (c.arch, c.eps, c.lr, c.mode) == ("test_resnet", 0.5, 1e-3, "usl")
