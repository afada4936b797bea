"""The demo's pair-distance diagnostic (cion.demo.pairs): the right pairs, the right distances."""
import numpy as np
import pytest
import torch

from cion.demo.pairs import MARGIN, PAIR_KINDS, mean_distances, measure, sample_pairs


def _labels():
    # 3 videos; video 0: tracklets 0, 1 (persons 0, 1); video 1: tracklets 2, 3 (persons 0, 2);
    # video 2: tracklet 4 (person 1); 4 rows each; one noisy row (person -1) per tracklet
    tracklet = np.repeat(np.arange(5), 4)
    video = np.array([0, 0, 1, 1, 2])[tracklet]
    person = np.array([0, 1, 0, 2, 1])[tracklet]
    person[::4] = -1
    return tracklet, video, person


def test_pairs_have_the_relation_their_kind_names():
    tracklet, video, person = _labels()
    pairs = sample_pairs(tracklet, video, person, n=100, seed=3)   # n > clean rows: all
    assert set(pairs) == set(PAIR_KINDS)
    anchors = pairs["augmented view"][0]
    assert (anchors == np.flatnonzero(person >= 0)).all()                # every clean row
    assert (pairs["augmented view"][0] == pairs["augmented view"][1]).all()
    rel = {"same tracklet": lambda i, j: (tracklet[i] == tracklet[j]) & (i != j),
           "same video, other person": lambda i, j: (video[i] == video[j]) & (person[i] != person[j]),
           "same person, other video": lambda i, j: (video[i] != video[j]) & (person[i] == person[j]),
           "other person, other video": lambda i, j: (video[i] != video[j]) & (person[i] != person[j])}
    for kind, holds in rel.items():
        i, j = pairs[kind]
        assert len(i) and holds(i, j).all() and (person[j] >= 0).all(), kind
    # person 2 appears in one video only: its anchors have no same-person-other-video partner
    i, _ = pairs["same person, other video"]
    assert not (person[i] == 2).any() and len(i) == 15 - 3


def test_mean_distances_match_a_by_hand_loop():
    rng = np.random.default_rng(0)
    f, v = rng.normal(size=(20, 6)), rng.normal(size=(12, 2, 6))
    tracklet, video, person = _labels()
    pairs = sample_pairs(tracklet, video, person, n=12, seed=1)
    got = mean_distances(f, v, pairs)

    def cos_dist(a, b):
        return 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    assert got["augmented view"] == pytest.approx(np.mean([cos_dist(x, y) for x, y in v]))
    for kind in PAIR_KINDS[1:]:
        assert got[kind] == pytest.approx(np.mean([cos_dist(f[a], f[b]) for a, b in zip(*pairs[kind])]))
    assert got[MARGIN] == pytest.approx(got["other person, other video"] - got["same person, other video"])
    # features that are the person's one-hot: same person -> 0, other person -> 1, margin 1
    onehot = np.eye(3)[np.maximum(person, 0)]
    known = mean_distances(onehot, np.ones((12, 2, 3)), pairs)
    assert known["same person, other video"] == pytest.approx(0.0)
    assert known["other person, other video"] == pytest.approx(1.0) and known[MARGIN] == pytest.approx(1.0)


def test_measure_reads_the_images_of_each_pair(tiny_world):
    from cion.data.manifest import read_manifest, resolve_paths
    from cion.data.transforms import MultiCropAugment, MultiCropConfig
    from cion.demo.runner import _global_tracklets
    from cion.models.backbone import build_backbone
    from cion.evaluation.retrieval import embed_paths

    df = read_manifest(tiny_world / "pretrain" / "manifest.parquet")
    paths = [str(p) for p in resolve_paths(df)]
    person = np.where(df["noise"] == "none", df["true_identity"], -1)
    pairs = sample_pairs(_global_tracklets(df), df["video"].factorize()[0], person, n=30)
    torch.manual_seed(0)
    model = build_backbone("resnet_micro", (64, 32))
    augment = MultiCropAugment(MultiCropConfig(global_size=(64, 32), local_crops=0))
    table = measure([("a", 0, model), ("a", 1, model)], paths, pairs, (64, 32), augment)
    one = table["a"]["seeds"][0]
    f = embed_paths(model, paths, (64, 32)).numpy()    # every row, by the plain route
    for kind in PAIR_KINDS[1:]:
        i, j = pairs[kind]
        assert one[kind] == pytest.approx(np.mean(1 - np.einsum("nd,nd->n", f[i], f[j])), abs=1e-5)
    assert table["a"]["augmented view"] == pytest.approx(one["augmented view"])   # same model twice
    assert 0 < one["augmented view"] < one["other person, other video"]
