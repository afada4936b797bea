"""Pre-training on the synthetic world's manifest (tracklet- and instance-level identities) and
zero-shot kNN evaluation on its Market-layout benchmark."""
from __future__ import annotations

import math

import numpy as np

from cion.pretrain import pretrain


def test_pretrain_on_world_and_evaluate(tiny_world, tmp_path, tiny_pretrain_cfg):
    from cion.data.manifest import read_manifest
    from cion.models.backbone import load_backbone
    from cion.evaluation.retrieval import market_split, zero_shot_map

    df = read_manifest(tiny_world / "pretrain" / "manifest.parquet")
    df["identity"] = df["tracklet"]                      # tracklet-level identities
    r = pretrain(df, tiny_pretrain_cfg(), tmp_path / "tracklet", progress=False)
    assert r.steps == 2 and all(math.isfinite(h["loss"]) for h in r.history)
    assert all(h["k"] == 2 for h in r.history)

    inst = df.copy()
    inst["identity"] = np.arange(len(inst))              # instance-level DINO: K = 1
    r1 = pretrain(inst, tiny_pretrain_cfg(curriculum=[[0, 1]], max_steps=1), tmp_path / "instance",
                  progress=False)
    assert r1.steps == 1 and r1.history[0]["k"] == 1

    paths, pids, cams = market_split(tiny_world / "market" / "query")
    assert len(paths) == len(pids) == len(cams) and (pids > 0).all() and (cams >= 0).all()
    res = zero_shot_map(load_backbone("vit_micro", r.backbone, (32, 16)), tiny_world / "market", (32, 16))
    assert 0.0 < res["mAP"] <= 1.0 and 0.0 <= res["rank1"] <= 1.0
