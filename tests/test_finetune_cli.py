"""`cion finetune` (supervised BNNeck stage): end to end on the tiny world from a random and from a
pre-training backbone, the written files, Market junk / distractors kept out of the classes, and
one-line user errors with exit status 2."""
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
        "--seed", "0"]


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
    assert "step 60/60" in stdout and "before" in stdout and "Rank-1" in stdout

    report = json.loads((out / "finetune.json").read_text())
    before, after = report["scores"]["before"], report["scores"]["after"]
    print(f"mAP {before['mAP']:.4f} -> {after['mAP']:.4f}, rank-1 {before['rank1']:.4f} -> "
          f"{after['rank1']:.4f} ({report['seconds']})")
    assert after["mAP"] > before["mAP"] + 0.03
    assert set(before) == set(after) == {"mAP", "rank1", "mINP"}
    assert report["arch"] == "test_resnet" and report["checkpoint"] is None
    assert report["config"]["steps"] == 60 and report["config"]["image_size"] == list(SIZE)
    assert report["history"][-1]["step"] == 60 and report["seconds"]["train"] > 0
    train = read_market1501(market).train
    assert report["identities"] == sorted(set(train.identity[train.identity > 0].tolist()))
    assert report["num_images"] == int((train.identity > 0).sum())

    path = out / "backbone.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["arch"] == "test_resnet"
        assert set(f.keys()) == set(build_backbone("test_resnet", SIZE).state_dict())
    again = zero_shot_map(load_backbone("test_resnet", path, SIZE), market, SIZE)
    assert again == pytest.approx(after, abs=1e-9)


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
    assert report["scores"]["before"] == pytest.approx(zero_shot_map(start, market, SIZE), abs=1e-9)

    code, _, err = run_cli(["finetune", "--data", market, "--out", out, "--checkpoint", ckpt,
                            "--steps", 8, *FAST[2:], "--arch", "test_vit"], capsys)
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
    assert "scores" not in report and "before" not in stdout
    assert min(report["identities"]) >= 1 and len(report["identities"]) == 20
    assert (out / "backbone.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/nope.safetensors"], "--checkpoint {tmp}/nope.safetensors does not exist"),
    (["--img-size", "64by32"], "--img-size must look like HEIGHTxWIDTH"),
    (["--arch", "test_resnt"], "Did you mean test_resnet"),
    (["--data", "{world}"], "expected Market-1501 folders"),
    (["--out", "{tmp}/file.txt/sub"], "cannot write there"),
    (["--optimizer", "rmsprop"], "optimizer"),
])
def test_user_errors_are_one_line(tiny_world, tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("not a directory")
    fill = {"tmp": tmp_path, "world": tiny_world}
    base = ["finetune", "--data", tiny_world / "market", "--out", tmp_path / "ft", "--steps", 2, *FAST]
    code, _, err = run_cli(base + [a.format(**fill) for a in args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cion: error:"), err
    assert message.format(**fill) in lines[0]
    assert not (tmp_path / "ft" / "finetune.json").exists()


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
    assert len(report["identities"]) == 20 and report["scores"]["after"]["mAP"] > 0
