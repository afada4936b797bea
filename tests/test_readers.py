"""Dataset readers on tiny fake layouts (empty image files: readers never decode images)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cion.data.readers import (DatasetLayoutError, read_cion_json, read_dataset, read_folder_dataset,
                               read_market1501, read_msmt17, read_table, read_table_dataset)


def touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


def make_market(root: Path) -> None:
    for name in ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s2_000101_01.jpg"]:
        touch(root, f"bounding_box_train/{name}")
    for name in ["0005_c2s1_000010_01.jpg", "0005_c1s1_000020_01.jpg", "0000_c4s3_000030_02.jpg",
                 "-1_c5s1_000040_01.jpg", "0009_c6s2_000050_01.jpg"]:
        touch(root, f"bounding_box_test/{name}")
    for name in ["0005_c1s1_000001_00.jpg", "0009_c2s1_000002_00.jpg"]:
        touch(root, f"query/{name}")
    touch(root, "bounding_box_test/Thumbs.db")   # non-image files are ignored


def test_market_reader(tmp_path):
    make_market(tmp_path)
    ds = read_market1501(tmp_path)
    assert len(ds.train) == 3 and len(ds.query) == 2
    g = ds.gallery.set_index("path")
    assert len(g) == 4 and "bounding_box_test/-1_c5s1_000040_01.jpg" not in g.index   # junk dropped
    assert g.loc["bounding_box_test/0000_c4s3_000030_02.jpg", "identity"] == 0         # distractor
    row = g.loc["bounding_box_test/0005_c2s1_000010_01.jpg"]
    assert (row.identity, row.camera, row.video, row.frame) == (5, 1, "c2s1", 10)      # 0-based cam
    assert ds.gallery.attrs["root"] == str(tmp_path)
    assert read_market1501(tmp_path, keep_junk=True).gallery.identity.min() == -1
    assert "1 junk (-1) dropped" in ds.describe()


def test_market_bad_layouts_say_what_was_expected(tmp_path):
    make_market(tmp_path / "Market-1501-v15.09.15")
    with pytest.raises(DatasetLayoutError, match="Did you mean --data .*Market-1501-v15.09.15"):
        read_market1501(tmp_path)
    with pytest.raises(DatasetLayoutError, match="missing \\['bounding_box_train'"):
        read_market1501(tmp_path / "nowhere")
    root = tmp_path / "Market-1501-v15.09.15"
    touch(root, "query/person_a.jpg")
    with pytest.raises(DatasetLayoutError, match="do not follow the Market-1501 pattern.*person_a.jpg"):
        read_market1501(root)


def make_msmt(root: Path, version: str) -> None:
    tr, te = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    lists = {
        "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                           "0001/0001_001_05_0303noon_0020_1.jpg 1"],
        "list_val.txt": ["0000/0000_002_03_0303morning_0030_0.jpg 0"],
        "list_query.txt": ["0000/0000_000_07_0303morning_0015_0.jpg 0"],
        "list_gallery.txt": ["0000/0000_001_15_0303afternoon_0015_0.jpg 0",
                             "0002/0002_004_02_0303noon_0011_0.jpg 2", ""],
    }
    for name, lines in lists.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(lines))
        d = tr if "train" in name or "val" in name else te
        for line in lines:
            if line:
                touch(root, f"{d}/{line.split()[0]}")


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt_versions_are_detected(tmp_path, version):
    make_msmt(tmp_path, version)
    ds = read_msmt17(tmp_path)
    assert ds.version == version and f"MSMT17 {version}" in ds.describe()
    assert len(ds.train) == 3 and ds.train.tracklet.is_unique
    assert ds.query.camera.tolist() == [6]
    assert ds.gallery.camera.tolist() == [14, 1] and ds.gallery.identity.tolist() == [0, 2]
    prefix = "test/" if version == "V1" else "mask_test_v2/"
    assert ds.gallery.path.iloc[0] == prefix + "0000/0000_001_15_0303afternoon_0015_0.jpg"


def test_msmt_errors(tmp_path):
    make_msmt(tmp_path, "V1")
    make_msmt(tmp_path, "V2")
    with pytest.raises(DatasetLayoutError, match="both MSMT17 V1.*and V2"):
        read_msmt17(tmp_path)
    other = tmp_path / "other"
    make_msmt(other / "MSMT17_V1", "V1")
    with pytest.raises(DatasetLayoutError, match="Did you mean --data .*MSMT17_V1"):
        read_msmt17(other)
    bad = tmp_path / "bad"
    make_msmt(bad, "V1")
    (bad / "list_query.txt").write_text("0000/0000_000_07.jpg\n")
    with pytest.raises(DatasetLayoutError, match="list_query.txt, line 1"):
        read_msmt17(bad)
    (bad / "list_query.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="missing \\['list_query.txt'\\]"):
        read_msmt17(bad)


def test_cion_json(tmp_path):
    recs = [{"file_path": "vid1/a.jpg", "id": 3, "captions": ["x"]},
            {"file_path": "vid1/b.jpg", "id": 3}, {"file_path": "vid2/c.jpg", "id": 3},
            {"file_path": "vid2/d.jpg", "id": 9}]
    (tmp_path / "ann.json").write_text(json.dumps(recs))
    df = read_cion_json(tmp_path / "ann.json")
    assert df.identity.tolist() == [3, 3, 3, 9] and (df.camera == -1).all()
    assert df.tracklet.tolist() == [0, 0, 1, 2] and df.video.tolist() == ["vid1", "vid1", "vid2", "vid2"]
    (tmp_path / "bad.json").write_text(json.dumps([{"path": "a.jpg", "pid": 1}]))
    with pytest.raises(DatasetLayoutError, match="lacks 'file_path' or 'id'"):
        read_cion_json(tmp_path / "bad.json")


def test_plain_folders(tmp_path):
    for rel in ["query/7/x_c1_0.jpg", "query/8/y_cam2.jpg", "gallery/7/a_c3_1.png",
                "gallery/8/b.jpg", "gallery/9/c_c1.jpg"]:
        touch(tmp_path, rel)
    ds = read_folder_dataset(tmp_path)
    assert ds.query.identity.tolist() == [7, 8] and ds.query.camera.tolist() == [1, 2]
    assert ds.gallery.camera.tolist() == [3, -1, 1]
    assert ds.gallery.path.tolist()[0] == "gallery/7/a_c3_1.png"
    assert any("camera ids unknown" in n for n in ds.notes)
    assert read_dataset("folder", tmp_path).gallery.attrs["root"] == str(tmp_path)
    touch(tmp_path / "flat", "query/img.jpg")          # an image not inside an identity folder
    touch(tmp_path / "flat", "gallery/1/a.jpg")
    with pytest.raises(DatasetLayoutError, match="query: expected <identity>/<image>.*loose image"):
        read_folder_dataset(tmp_path / "flat")
    with pytest.raises(DatasetLayoutError, match="expected query/<identity>/<image>.*missing"):
        read_folder_dataset(tmp_path / "query")

def test_user_tables(tmp_path):
    df = pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "identity": ["ann", "bob", "ann"],
                       "split": ["query", "gallery", "Gallery"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        out = read_table(tmp_path / name)
        assert out.identity.tolist() == [0, 1, 0] and (out.camera == -1).all()
        assert out.attrs["root"] == str(tmp_path.resolve())
    ds = read_table_dataset(tmp_path / "t.csv")
    assert len(ds.query) == 1 and len(ds.gallery) == 2
    pd.DataFrame({"file": ["a.jpg"], "identity": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetLayoutError, match="missing column\\(s\\) \\['path'\\]"):
        read_table(tmp_path / "bad.csv")
    pd.DataFrame({"path": ["a.jpg"], "identity": [1], "split": ["test"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DatasetLayoutError, match="unknown value"):
        read_table(tmp_path / "s.csv")


def test_synthetic_world_market_loads_and_evaluates(tiny_world):
    from cion.evaluation import evaluate_features
    from cion.handcrafted import colour_histogram_files
    from cion.data.manifest import resolve_paths

    ds = read_market1501(Path(tiny_world) / "market")
    assert len(ds.query) > 0 and len(ds.gallery) > len(ds.query) and (ds.gallery.identity == 0).any()
    qf = colour_histogram_files(resolve_paths(ds.query))
    gf = colour_histogram_files(resolve_paths(ds.gallery))
    res = evaluate_features(qf, gf, ds.query.identity, ds.gallery.identity, ds.query.camera,
                            ds.gallery.camera)
    assert res["num_valid_queries"] == len(ds.query)
    chance = 1.0 / ds.gallery.identity.nunique()
    assert res["mAP"] > 3 * chance   # the colour descriptor is far above chance on the world
