"""Every option the README documents has an effect a test checks: `cion evaluate --dataset
msmt17|folder|table --flip --k1 --k2 --lambda`, unknown cameras (-1), `cion zoo convert --which`,
`cion denoise --whiten --cross-order` and its ground-truth scores, `cion pretrain` sizes /
precision / resume, `cion finetune --optimizer sgd`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cion.cli import main


def _run(args, capsys=None):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    if capsys is not None:
        out, err = capsys.readouterr()
        return exc.value.code, out, err
    return exc.value.code


# ------------------------------------------------------------------------------------ evaluate
def _benchmark_layouts(market: Path, root: Path) -> dict[str, Path]:
    """The world's query / gallery (identities > 0) in the four layouts ``--dataset`` reads."""
    from cion.data.readers import read_market1501

    ds = read_market1501(market)
    query = ds.query.assign(split="query")
    gallery = ds.gallery[ds.gallery["identity"] > 0].assign(split="gallery")
    rows = pd.concat([query, gallery], ignore_index=True)
    src = [market / p for p in rows["path"]]
    names = [Path(p).name for p in rows["path"]]
    out = {k: root / k for k in ("market1501", "msmt17", "folder")}
    for i, (s, name, split, pid, cam) in enumerate(zip(src, names, rows["split"], rows["identity"],
                                                       rows["camera"])):
        sub = "query" if split == "query" else "bounding_box_test"
        for d, rel in ((out["market1501"], f"{sub}/{name}"),
                       (out["folder"], f"{split}/{pid:04d}/{name}"),
                       (out["msmt17"], f"test/{pid:04d}/{pid:04d}_{i:03d}_{cam + 1:02d}_0303morning_0001_0.jpg")):
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s, d / rel)
    (out["market1501"] / "bounding_box_train").mkdir()
    shutil.copyfile(src[0], out["market1501"] / "bounding_box_train" / names[0])
    msmt = out["msmt17"]
    (msmt / "train" / "0000").mkdir(parents=True)
    shutil.copyfile(src[0], msmt / "train" / "0000" / "0000_000_01_0303morning_0001_0.jpg")
    (msmt / "list_train.txt").write_text("0000/0000_000_01_0303morning_0001_0.jpg 0\n")
    (msmt / "list_val.txt").write_text("0000/0000_000_01_0303morning_0001_0.jpg 0\n")
    for split in ("query", "gallery"):
        lines = [f"{p.parent.name}/{p.name} {int(p.parent.name)}"
                 for i, p in enumerate(sorted((msmt / "test").glob("*/*.jpg"), key=lambda q: int(q.name.split("_")[1])))
                 if (rows["split"].iloc[int(p.name.split("_")[1])] == split)]
        (msmt / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
    table = pd.DataFrame({"path": [str(s) for s in src], "identity": rows["identity"],
                          "camera": rows["camera"], "split": rows["split"]})
    out["table"] = root / "table.csv"
    table.to_csv(out["table"], index=False)
    out["table_no_cameras"] = root / "table_no_cameras.csv"
    table.drop(columns="camera").to_csv(out["table_no_cameras"], index=False)
    return out


def test_evaluate_same_benchmark_in_every_layout_gives_the_same_scores(tiny_world, tmp_path):
    """--dataset market1501 | msmt17 | folder | table read the same images, identities and
    cameras: identical metrics. Without cameras (-1) no gallery item counts as "the same
    camera": the scores are those of the protocol with nothing removed."""
    from cion.evaluation import evaluate_features
    from cion.handcrafted import colour_histogram_files

    layouts = _benchmark_layouts(Path(tiny_world) / "market", tmp_path / "data")
    reports = {}
    for name, root in layouts.items():
        dataset = "table" if name.startswith("table") else name
        assert _run(["evaluate", "--model", "colour-hist", "--dataset", dataset, "--root", root,
                     "--out", tmp_path / name, "--no-figures"]) == 0
        reports[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    ref = reports["market1501"]["plain"]
    assert ref["num_queries"] > 10
    for name in ("msmt17", "folder", "table"):
        got = reports[name]["plain"]
        assert got["num_queries"] == ref["num_queries"] and got["num_gallery"] == ref["num_gallery"]
        assert got["mAP"] == pytest.approx(ref["mAP"], abs=1e-6), name
        assert got["cmc"] == pytest.approx(ref["cmc"], abs=1e-6), name
    assert reports["msmt17"]["version"] == "V1"
    # unknown cameras: every same-identity gallery image is a positive
    table = pd.read_csv(layouts["table"])
    q, g = table[table.split == "query"], table[table.split == "gallery"]
    qf, gf = colour_histogram_files(q.path.tolist()), colour_histogram_files(g.path.tolist())
    minus = -np.ones(len(q), int), -np.ones(len(g), int)
    expected = evaluate_features(qf, gf, q.identity.to_numpy(), g.identity.to_numpy(), *minus)
    no_cam = reports["table_no_cameras"]["plain"]
    assert no_cam["mAP"] == pytest.approx(float(expected["mAP"]), abs=1e-4)
    assert no_cam["num_gallery"] == ref["num_gallery"]
    assert no_cam["mAP"] > ref["mAP"] + 0.01          # same-camera positives now count


def test_camera_minus_one_is_never_the_same_camera():
    from cion.evaluation import evaluate_features, evaluate_rank

    dist = np.array([[0.1, 0.5, 0.9]])        # gallery 0 is the same identity, ranked first
    q_pid, g_pid = np.array([7]), np.array([7, 3, 7])
    # known cameras: gallery 0 shares the query's camera and is removed; gallery 2 is found third
    r = evaluate_rank(dist, q_pid, g_pid, np.array([1]), np.array([1, 2, 3]))
    assert r["mAP"] == pytest.approx(0.5)
    for q_cam, g_cam in (([-1], [-1, 2, 3]), ([1], [-1, 2, 3]), ([-1], [1, 2, 3])):
        r = evaluate_rank(dist, q_pid, g_pid, np.array(q_cam), np.array(g_cam))
        assert r["mAP"] == pytest.approx((1 + 2 / 3) / 2), (q_cam, g_cam)   # both positives kept
    qf, gf = np.eye(3)[:1], np.eye(3)[[0, 1, 2]]
    r = evaluate_features(qf, gf, q_pid, g_pid, np.array([-1]), np.array([-1, -1, -1]))
    assert r["mAP"] == pytest.approx((1 + 2 / 3) / 2) and r["num_valid_queries"] == 1


def test_evaluate_flip_and_rerank_parameters_reach_the_computation(tiny_world, tmp_path):
    """--flip averages with the mirrored image; --k1/--k2/--lambda are the re-ranking's."""
    from cion.data.manifest import resolve_paths
    from cion.data.readers import read_market1501
    from cion.evaluation import evaluate_distance_chunks, rerank_features
    from cion.extract import extract_features, load_model
    from cion.models import create_model
    from cion.models.checkpoint import save_backbone

    torch.manual_seed(0)
    path = tmp_path / "micro.safetensors"
    save_backbone(create_model("resnet_micro", img_size=(64, 32)), path)
    market = Path(tiny_world) / "market"
    common = ["evaluate", "--model", path, "--dataset", "market1501", "--root", market,
              "--img-size", "64x32", "--no-figures", "--device", "cpu"]
    assert _run(common + ["--out", tmp_path / "plain"]) == 0
    assert _run(common + ["--out", tmp_path / "flip", "--flip", "--rerank", "--k1", 6, "--k2", 2,
                          "--lambda", 0.5]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    flip = json.loads((tmp_path / "flip" / "metrics.json").read_text())
    assert flip["flip"] is True and plain["flip"] is False
    ds = read_market1501(market)
    model = load_model(str(path), img_size=(64, 32))
    kw = dict(flip=True, dtype="float32", device="cpu", progress=False)
    qf = extract_features(resolve_paths(ds.query), model, **kw)
    gf = extract_features(resolve_paths(ds.gallery), model, **kw)
    labels = (ds.query.identity.to_numpy(), ds.gallery.identity.to_numpy(),
              ds.query.camera.to_numpy(), ds.gallery.camera.to_numpy())
    from cion.evaluation import evaluate_features

    flipped = evaluate_features(qf, gf, *labels)
    assert flip["plain"]["mAP"] == pytest.approx(float(flipped["mAP"]), abs=1e-5)
    assert abs(flip["plain"]["mAP"] - plain["plain"]["mAP"]) > 1e-4      # mirroring changed it
    q, g = torch.as_tensor(qf), torch.as_tensor(gf)
    scores = {}
    for k1, k2, lam in ((6, 2, 0.5), (20, 6, 0.3)):
        stream = rerank_features(q, g, k1, k2, lam, stream=True)
        scores[(k1, k2, lam)] = float(evaluate_distance_chunks(stream, len(qf), len(gf), *labels)["mAP"])
    rr = flip["reranked"]
    assert (rr["k1"], rr["k2"], rr["lambda"]) == (6, 2, 0.5)
    assert rr["mAP"] == pytest.approx(scores[(6, 2, 0.5)], abs=1e-5)
    assert abs(scores[(6, 2, 0.5)] - scores[(20, 6, 0.3)]) > 1e-4         # the values matter


# ------------------------------------------------------------------------------------ zoo convert
def test_zoo_convert_which_student_takes_the_student(tmp_path, capsys):
    from safetensors import safe_open

    from cion.models import create_model
    from cion.models.checkpoint import load_official_checkpoint
    from fake_checkpoint import load_layouts, write_fake_official_checkpoint

    layouts = load_layouts(Path(__file__).parent / "data" / "reidzoo_layouts.json.gz")
    src = tmp_path / "GhostNet.pth"
    write_fake_official_checkpoint(layouts["ghostnet_0_5"], src, seed=3)
    outs = {}
    for which in ("teacher", "student"):
        outs[which] = tmp_path / f"{which}.safetensors"
        code, _, err = _run(["zoo", "convert", src, "--arch", "ghostnet_0_5", "--out", outs[which],
                             "--which", which], capsys)
        assert code == 0, err
        with safe_open(str(outs[which]), framework="pt") as f:
            assert f.metadata()["source_entry"] == which
    student = create_model("ghostnet_0_5", checkpoint=outs["student"]).state_dict()
    teacher = create_model("ghostnet_0_5", checkpoint=outs["teacher"]).state_dict()
    direct = create_model("ghostnet_0_5")
    load_official_checkpoint(direct, src, "ghostnet_0_5", which="student")
    params = [k for k, v in student.items() if v.is_floating_point()]
    assert all(torch.equal(student[k], direct.state_dict()[k]) for k in student)
    assert sum(not torch.equal(student[k], teacher[k]) for k in params) > 0.9 * len(params)
    code, _, err = _run(["zoo", "convert", src, "--arch", "ghostnet_0_5", "--out",
                         tmp_path / "x.safetensors", "--which", "head"], capsys)
    assert code == 2 and "'head'" in err and not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------ denoise
def test_denoise_whiten_cross_order_and_ground_truth_scores(tmp_path, capsys):
    from cion.data.manifest import new_manifest, read_manifest, write_manifest
    from cion.denoise import denoise
    from cion.denoise.metrics import pairwise_precision_recall

    # 72 videos of two people each (6 identities); a person's next video is 6 videos later, so
    # the paper's sliding range (r_s = 1 here) never meets them and the coarse order does
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:6] + 0.3 * rng.normal(size=(6, 16))
    who = np.repeat([i for v in range(72) for i in (v % 6, (v + 3) % 6)], 4)   # tracklets of 4
    X = centres[who] + 0.12 * rng.normal(size=(len(who), 16)) + 0.5 * rng.normal(size=16)
    X[::7] = rng.normal(size=(len(X[::7]), 16))                 # false detections
    truth = np.where(np.arange(len(who)) % 7 == 0, -1, who)
    df = new_manifest(path=[f"i{k}.jpg" for k in range(len(who))],
                      video=[f"v{k // 8:02d}" for k in range(len(who))],
                      tracklet=np.arange(len(who)) // 4, true_identity=truth)
    write_manifest(df, tmp_path / "in.parquet")
    np.save(tmp_path / "f.npy", X.astype(np.float32))
    base = ["denoise", "--manifest", tmp_path / "in.parquet", "--features", tmp_path / "f.npy",
            "--range", 1, "--sigma-cst", 0.1, "--sigma-drm", 0.05]
    runs = {"plain": [], "whiten": ["--whiten", 6], "both": ["--cross-order", "both"]}
    got = {}
    for name, extra in runs.items():
        code, out, err = _run(base + ["--out", tmp_path / f"{name}.parquet", *extra], capsys)
        assert code == 0, err
        got[name] = (read_manifest(tmp_path / f"{name}.parquet")["identity"].to_numpy(),
                     json.loads((tmp_path / f"{name}.stats.json").read_text()), out)
    video, tracklet = df["video"].to_numpy(), df["tracklet"].to_numpy()
    kw = dict(sigma_cst=0.1, sigma_drm=0.05, range_half_width=1)
    refs = {"plain": denoise(X, video, tracklet, **kw),
            "whiten": denoise(X, video, tracklet, whiten=6, **kw),
            "both": denoise(X, video, tracklet, cross_order="both", **kw)}
    for name, (ident, stats, out) in got.items():
        np.testing.assert_array_equal(ident, refs[name].identity)
        gt = pairwise_precision_recall(ident, truth)
        assert stats["ground_truth"] == pytest.approx(gt)
        assert f"pairwise precision {gt['precision']:.4f} recall {gt['recall']:.4f}" in out
    assert not np.array_equal(got["whiten"][0], got["plain"][0])
    assert not np.array_equal(got["both"][0], got["plain"][0])
    assert got["both"][1]["ground_truth"]["recall"] > got["plain"][1]["ground_truth"]["recall"] + 0.1
    assert got["both"][1]["params"]["cross_order"] == "both"


# ------------------------------------------------------------------------------------ pretrain
TINY_RECIPE = """
arch: vit_micro
epochs: 2
batch_size: 8
local_crops: 1
global_size: [32, 16]
local_size: [16, 8]
curriculum: [[0, 2]]
out_dim: 64
hidden_dim: 32
bottleneck_dim: 16
warmup_epochs: 0.5
num_workers: 0
log_every: 1
tensorboard: false
device: cpu
"""


def test_pretrain_cli_sizes_precision_and_resume(tmp_path, capsys):
    """The command's options override the recipe and reach the crops and the autocast; running
    it again with the same --out resumes where it stopped (same steps as one run)."""
    from cion.pretrain.toydata import make_toy_manifest

    make_toy_manifest(tmp_path / "data", identities=4, images_per_identity=4, size=(48, 24))
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    data = tmp_path / "data" / "manifest.parquet"
    args = ["pretrain", "--data", data, "--config", tmp_path / "tiny.yaml", "--no-progress",
            "--global-size", "48x24", "--local-size", "24x16", "--local-crops", 2,
            "--batch-size", 4, "--precision", "bf16", "--seed", 5]
    shapes, dtypes = [], []

    def hook(module, inputs, output):
        if torch.is_grad_enabled() and type(module).__name__ == "PatchEmbed":
            shapes.append(tuple(inputs[0].shape[-2:]))
        if torch.is_grad_enabled() and isinstance(module, torch.nn.Linear):
            dtypes.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        code, _, err = _run(args + ["--out", tmp_path / "run", "--max-steps", 2], capsys)
        assert code == 0, err
        assert set(shapes) == {(48, 24), (24, 16)} and set(dtypes) == {torch.bfloat16}
        config = json.loads((tmp_path / "run" / "config.json").read_text())
        assert config["global_size"] == [48, 24] and config["local_size"] == [24, 16]
        assert config["local_crops"] == 2 and config["batch_size"] == 4
        assert config["precision_used"] == "bf16" and config["seed"] == 5
        code, _, err = _run(args + ["--out", tmp_path / "run", "--max-steps", 5], capsys)
        assert code == 0, err
        assert "resuming" in err
    finally:
        handle.remove()
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    code, _, err = _run(args + ["--out", tmp_path / "one", "--max-steps", 5], capsys)
    assert code == 0, err
    a = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert a == pytest.approx(b, abs=1e-6)
    # a changed size is refused on resume, with the option named
    code, _, err = _run(args[:-6] + ["--local-crops", 2, "--batch-size", 4, "--out", tmp_path / "run",
                                     "--max-steps", 6, "--global-size", "32x16"], capsys)
    assert code == 2 and "global_size" in err


# ------------------------------------------------------------------------------------ finetune
def test_finetune_optimizer_sgd(tiny_world, tmp_path, capsys, monkeypatch, one_torch_thread):
    calls = {"SGD": 0, "Adam": 0}
    for name in calls:
        cls = getattr(torch.optim, name)
        real = cls.step

        def spy(self, *a, _real=real, _name=name, **kw):
            calls[_name] += 1
            if _name == "SGD":
                assert all(g["momentum"] == 0.9 for g in self.param_groups)
            return _real(self, *a, **kw)

        monkeypatch.setattr(cls, "step", spy)
    fast = ["--data", Path(tiny_world) / "market", "--arch", "resnet_micro", "--img-size", "64x32",
            "--steps", 3, "--warmup-steps", 1, "--no-evaluate", "--seed", 0]
    code, _, err = _run(["finetune", *fast, "--out", tmp_path / "sgd", "--optimizer", "sgd"], capsys)
    assert code == 0, err
    assert calls == {"SGD": 3, "Adam": 0}
    assert json.loads((tmp_path / "sgd" / "finetune.json").read_text())["config"]["optimizer"] == "sgd"
    code, _, err = _run(["finetune", *fast, "--out", tmp_path / "adam", "--optimizer", "adam"], capsys)
    assert code == 0, err
    assert calls == {"SGD": 3, "Adam": 3}
