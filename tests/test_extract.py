"""Feature extraction and the extract / evaluate commands, end to end on the synthetic world."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cion.data.manifest import read_manifest, resolve_paths
from cion.errors import CionError
from cion.extract import FeatureModel, _Images, extract_features, load_data, load_model


class TinyNet(torch.nn.Module):
    """Position-sensitive so that flipping changes the output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 2, 6)

    def forward(self, x):
        h = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), (4, 2))
        return self.fc(h.flatten(1))


def test_network_extraction_batched_flip_and_order(tiny_world):
    df = load_data(Path(tiny_world) / "market" / "query")      # a plain folder of images
    paths = resolve_paths(df)[:13]
    model = FeatureModel("tiny", TinyNet().eval(), (32, 16), 6)
    f32 = extract_features(paths, model, batch_size=4, dtype="float32", progress=False, device="cpu")
    imgs = torch.stack([_Images(paths, (32, 16))[i][0] for i in range(len(paths))])
    with torch.no_grad():
        plain = torch.nn.functional.normalize(model.module(imgs), dim=1).numpy()
        both = model.module(imgs) + model.module(torch.flip(imgs, dims=[3]))
        flipped = torch.nn.functional.normalize(both, dim=1).numpy()
    np.testing.assert_allclose(f32, plain, atol=1e-5)           # row order = path order
    ff = extract_features(paths, model, batch_size=5, flip=True, dtype="float16", progress=False,
                          device="cpu")
    assert ff.dtype == np.float16
    np.testing.assert_allclose(ff.astype(np.float32), flipped, atol=2e-3)
    assert not np.allclose(flipped, plain, atol=1e-3)


def test_extract_cli_colour_hist(tiny_world, tmp_path):
    from cion.cli import main

    out = tmp_path / "f.npy"
    with pytest.raises(SystemExit) as e:
        main(["extract", "--data", str(Path(tiny_world) / "market"), "--model", "colour-hist",
              "--out", str(out)])
    assert e.value.code == 0
    feats = np.load(out)
    man = read_manifest(out.with_name("f.manifest.parquet"))
    assert feats.shape[0] == len(man) and feats.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=2e-3)
    assert set(man["split"]) == {"train", "query", "gallery"}
    from cion.handcrafted import colour_histogram_files
    k = [0, len(man) // 2, len(man) - 1]
    ref = colour_histogram_files([man.path.iloc[i] for i in k])
    np.testing.assert_allclose(feats[k].astype(np.float32), ref, atol=2e-3)   # manifest order
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["rows"] == len(man) and info["model"] == "colour-hist"


def test_bad_model_and_data_errors(tmp_path, capsys, monkeypatch):
    from cion.cli import main

    monkeypatch.chdir(tmp_path)                  # evaluate's default --out is ./cion_eval

    with pytest.raises(CionError, match="unknown model 'nonsense'"):
        load_model("nonsense")
    with pytest.raises(SystemExit) as e:
        main(["extract", "--data", str(tmp_path / "none"), "--model", "colour-hist",
              "--out", str(tmp_path / "f.npy")])
    assert e.value.code == 2 and "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--model", "colour-hist", "--dataset", "market1501", "--root", str(tmp_path)])
    assert e.value.code == 2 and "expected Market-1501 folders" in capsys.readouterr().err
    assert not (tmp_path / "cion_eval").exists()  # nothing made before the inputs were checked


def test_evaluate_cli_end_to_end(tiny_world, tmp_path, capsys):
    from cion.cli import main

    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--model", "colour-hist", "--dataset", "market1501", "--root",
              str(Path(tiny_world) / "market"), "--rerank", "--out", str(out)])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "mAP" in text and "re-ranked" in text and "Rank-1" in text
    report = json.loads((out / "metrics.json").read_text())
    for key in ("plain", "reranked"):
        assert 0.15 < report[key]["mAP"] <= 1 and len(report[key]["cmc"]) == 50
        assert report[key]["rank1"] >= report[key]["mAP"] * 0.5
    for name in ("ranked_worst.png", "ranked_best.png", "tsne.png", "cmc.png",
                 "ranked_best_reranked.png"):
        assert (out / name).stat().st_size > 5000


def test_evaluate_with_a_zoo_model(tiny_world, tmp_path):
    """A real ReIDZoo backbone (random weights: no downloads) runs through the same pipeline."""
    from cion.evaluation.pipeline import evaluate_model

    report = evaluate_model("resnet18", "market1501", Path(tiny_world) / "market", out_dir=tmp_path,
                            img_size=(64, 32), batch_size=32, figures=False, progress=False,
                            echo=lambda *a: None, device="cpu")
    assert report["feature_dim"] == 512 and 0 < report["plain"]["mAP"] <= 1
    assert report["plain"]["num_valid_queries"] == report["plain"]["num_queries"]


def test_evaluate_reads_a_test_arch_backbone_file(tiny_world, tmp_path):
    """A micro-model backbone file (``resnet_micro``, registered beside the zoo) is evaluated from its
    ``arch`` metadata, with the same numbers as the pre-training's own zero-shot scorer."""
    from cion.evaluation.pipeline import evaluate_model
    from cion.models.backbone import build_backbone
    from cion.models.checkpoint import save_backbone
    from cion.evaluation.retrieval import zero_shot_map

    torch.manual_seed(0)
    model = build_backbone("resnet_micro", (64, 32)).eval()
    path = tmp_path / "backbone.safetensors"
    save_backbone(model, path, {"arch": "resnet_micro"})
    fm = load_model(str(path), img_size=(64, 32))
    assert fm.name == "resnet_micro:backbone.safetensors" and fm.dim == 64
    report = evaluate_model(str(path), "market1501", Path(tiny_world) / "market", out_dir=tmp_path,
                            img_size=(64, 32), figures=False, progress=False,
                            echo=lambda *a: None, device="cpu")
    expected = zero_shot_map(model, Path(tiny_world) / "market", (64, 32))
    assert report["plain"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
