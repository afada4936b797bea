"""The fast denoising pipeline against the literal float64 transcription of Eq. 1-7.

Every world is small, random and written in shuffled manifest order (tracklets not contiguous),
with clustered identities so that every level does something: exclusions, reallocations,
discards, within-video merges and cross-video links.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cion.denoise import denoise, reference_denoise, reference_noise
from cion.errors import CionError

ALL_LEVELS = [c for r in range(4) for c in itertools.combinations(("tracklet", "video", "cross"), r)]


def make_world(seed: int, D: int = 6, videos: int = 5, people: int = 6, dup: float = 0.1,
               outlier: float = 0.15, shuffle: bool = True):
    """Random clustered world. Returns (X (N, D) float32, video (N,) str, tracklet (N,) int)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, D))
    X, vid, trk = [], [], []
    tid = 1000
    for v in range(videos):
        for _ in range(rng.integers(1, 5)):                 # tracklets in this video (>= 1)
            size = int(rng.integers(1, 7))
            who = rng.integers(people)
            for _ in range(size):
                if rng.random() < outlier:
                    x = rng.normal(size=D)
                elif X and rng.random() < dup:
                    x = X[rng.integers(len(X))].copy()         # identical features -> ties
                else:
                    x = centres[who] + 0.35 * rng.normal(size=D)
                X.append(x)
                vid.append(f"vid{v * 7 % 11}")
                trk.append(tid)
            tid += int(rng.integers(1, 4))
    X = np.asarray(X, dtype=np.float32)
    vid, trk = np.asarray(vid), np.asarray(trk)
    if shuffle:
        p = rng.permutation(len(X))
        X, vid, trk = X[p], vid[p], trk[p]
    return X, vid, trk


def assert_same(X, vid, trk, **kw):
    fast = denoise(X, vid, trk, **kw)
    ref_kw = {k: v for k, v in kw.items() if k in ("sigma_cst", "sigma_drm", "range_half_width",
                                                  "levels")}
    ident, status = reference_denoise(X, vid, trk, **ref_kw)
    np.testing.assert_array_equal(fast.identity, ident)
    np.testing.assert_array_equal(fast.status, status)
    return fast, ident, status


@pytest.mark.parametrize("seed", range(12))
def test_all_levels_match_reference(seed):
    X, vid, trk = make_world(seed)
    rng = np.random.default_rng(100 + seed)
    sc = float(rng.choice([0.05, 0.15, 0.3, 0.6]))
    sd = float(rng.choice([0.05, 0.2, 0.4]))
    rs = int(rng.choice([0, 1, 2, 5, 1000]))
    fast, ident, status = assert_same(X, vid, trk, sigma_cst=sc, sigma_drm=sd, range_half_width=rs)
    # n_S after the last level equals Eq. 3 on the reference partition
    assert fast.stats[-1]["n_S"] == pytest.approx(
        reference_noise(X, ident, sigma_cst=sc, sigma_drm=sd), abs=1e-12)


@pytest.mark.parametrize("levels", ALL_LEVELS, ids=lambda l: "+".join(l) or "none")
def test_every_level_subset_matches_reference(levels):
    for seed in (3, 4):
        X, vid, trk = make_world(seed, people=4)
        assert_same(X, vid, trk, sigma_cst=0.3, sigma_drm=0.3, range_half_width=2, levels=levels)


def test_worlds_exercise_every_branch():
    """Guard against a vacuous comparison: the random worlds do exclude, reallocate, discard,
    merge within videos and link across videos."""
    seen = {"reallocated": 0, "discarded": 0, "merge": 0, "link": 0}
    for seed in range(12):
        X, vid, trk = make_world(seed)
        r = denoise(X, vid, trk, sigma_cst=0.3, sigma_drm=0.3, range_half_width=3)
        by = {s["level"]: s for s in r.stats}
        seen["reallocated"] += by["video"]["images_reallocated"]
        seen["discarded"] += by["video"]["images_discarded"]
        seen["merge"] += by["video"]["merge_links"]
        seen["link"] += by["cross"]["links"]
    assert all(v > 0 for v in seen.values()), seen


def test_per_level_noise_matches_reference():
    X, vid, trk = make_world(7)
    kw = dict(sigma_cst=0.3, sigma_drm=0.3, range_half_width=3)
    r = denoise(X, vid, trk, **kw)
    stages = {"raw": (), "tracklet": ("tracklet",), "video": ("tracklet", "video"),
              "cross": ("tracklet", "video", "cross")}
    for st in r.stats:
        ident, _ = reference_denoise(X, vid, trk, levels=stages[st["level"]], **kw)
        assert st["identities"] == ident.max() + 1
        assert st["n_S"] == pytest.approx(reference_noise(X, ident, sigma_cst=0.3, sigma_drm=0.3))
        assert st["n_S_exact"]


# ---- edge cases -------------------------------------------------------------------------------

def test_single_image_tracklets():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4)).astype(np.float32)
    X[6:] = X[:6] + 0.01                                  # near-duplicates to link
    vid = np.array(["a", "b", "c"] * 4)
    trk = np.arange(12) * 3
    r, ident, status = assert_same(X, vid, trk, sigma_cst=0.2, sigma_drm=0.18, range_half_width=4)
    assert (status == "kept").all()                       # nothing to compare in level 1
    assert ident.max() + 1 < 12                           # but the duplicates were linked


def test_video_with_one_tracklet_discards_everything_excluded():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 5)).astype(np.float32)        # unrelated images: outliers
    vid = np.array(["solo"] * 8)
    trk = np.full(8, 7)
    r, ident, status = assert_same(X, vid, trk, sigma_cst=0.2, sigma_drm=0.18)
    assert (status == "discarded").sum() == 7             # level 1 never empties a tracklet
    assert (status == "kept").sum() == 1
    assert (ident[status == "discarded"] == -1).all()


def test_every_excluded_sample_discarded():
    rng = np.random.default_rng(2)
    base = np.eye(8)
    X = np.vstack([base[0] + 0.01 * rng.normal(size=(4, 8)), rng.normal(size=(2, 8)) * [0, 0, 1, 1, 1, 1, 1, 1],
                   base[1] + 0.01 * rng.normal(size=(4, 8))]).astype(np.float32)
    vid = np.array(["v"] * 10)
    trk = np.array([1] * 6 + [2] * 4)
    r, ident, status = assert_same(X, vid, trk, sigma_cst=0.2, sigma_drm=0.18)
    assert (status == "discarded").sum() == 2 and (status == "reallocated").sum() == 0


def test_identical_features_and_two_member_ties():
    x = np.ones((6, 3), dtype=np.float32)
    assert_same(x, np.array(["a", "a", "b", "b", "c", "c"]), np.arange(6) // 2)
    # two members, both deviations equal: the first (earliest row) is removed, the second stays
    X = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    r, ident, status = assert_same(X, np.array(["v", "v"]), np.array([5, 5]))
    assert list(status) == ["discarded", "kept"]


def test_reallocation_tie_goes_to_earliest_row():
    # sample e is equidistant to the centroids of tracklets 2 and 3; 3 starts earlier in the file
    e = [1.0, 0.0, 0.0]
    a = [0.9, 0.43588989, 0.0]
    b = [0.9, -0.43588989, 0.0]
    X = np.array([b, b, e, a, a, [0, 0, 1.0], [0, 0, 1.0]], dtype=np.float64)
    vid = np.array(["v"] * 7)
    trk = np.array([3, 3, 1, 2, 2, 1, 1])
    r, ident, status = assert_same(X, vid, trk, sigma_cst=0.2, sigma_drm=0.01,
                                   levels=("tracklet", "video"))
    assert status[2] == "reallocated" and ident[2] == ident[0]


def test_zero_centroid():
    # a tracklet whose members cancel out: its centroid is zero, distance 1.0 to anything
    X = np.array([[1, 0], [-1, 0], [1, 0.01], [0.99, 0.0]], dtype=np.float64)
    assert_same(X, np.array(["v"] * 4), np.array([1, 1, 2, 2]), sigma_cst=0.5, sigma_drm=0.5)


def test_memmap_fp16_and_block_boundaries(tmp_path):
    X, vid, trk = make_world(11, videos=8)
    path = tmp_path / "f.npy"
    np.save(path, X.astype(np.float16))
    ref = denoise(np.load(path).astype(np.float32), vid, trk, sigma_cst=0.3, sigma_drm=0.3,
                  range_half_width=2)
    got = denoise(path, vid, trk, sigma_cst=0.3, sigma_drm=0.3, range_half_width=2, block_rows=5)
    np.testing.assert_array_equal(ref.identity, got.identity)
    np.testing.assert_array_equal(ref.status_code, got.status_code)


def test_coarse_order_finds_links_the_sequence_misses():
    rng = np.random.default_rng(5)
    D, people, per = 16, 200, 3
    centres = rng.normal(size=(people, D))
    # each person appears in `per` videos, spread far apart in the sequence
    who = np.tile(np.arange(people), per)
    X = (centres[who] + 0.02 * rng.normal(size=(len(who), D))).astype(np.float32)
    vid = np.array([f"v{i:04d}" for i in range(len(who))])
    trk = np.arange(len(who))
    seq = denoise(X, vid, trk, range_half_width=64, levels="cross")
    both = denoise(X, vid, trk, range_half_width=64, levels="cross", cross_order="both")
    assert seq.identity.max() + 1 == len(who)             # r_s = 64 < people: nothing linked
    assert both.identity.max() + 1 < seq.identity.max() + 1
    # "both" only adds links: every sequence identity lies inside one "both" identity
    for k in range(seq.identity.max() + 1):
        assert len(set(both.identity[seq.identity == k])) == 1


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_bad_feature_rows(bad):
    X, vid, trk = make_world(0)
    X[3] = np.nan if bad == "nan" else 0.0
    with pytest.raises(CionError, match="NaN" if bad == "nan" else "all-zero"):
        denoise(X, vid, trk)


def test_row_count_mismatch_and_unknown_level():
    X, vid, trk = make_world(0)
    with pytest.raises(CionError, match="rows"):
        denoise(X[:-1], vid, trk)
    with pytest.raises(CionError, match="unknown denoising level"):
        denoise(X, vid, trk, levels="tracklet,vidoe")


def test_neighbour_search_pair_count_close_to_exact():
    """The k-means-cell count of close centroid pairs (n_S at scale) is a lower bound that finds
    nearly all pairs on clustered data; the exact path counts every pair."""
    from cion.denoise import count_close_pairs

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(150, 32))
    U = centres[rng.integers(0, 150, 3000)] + 0.12 * rng.normal(size=(3000, 32))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    exact, is_exact = count_close_pairs(U, 0.18, exact_limit=10**6)
    brute = int(np.count_nonzero(np.triu(1.0 - U @ U.T < 0.18, 1)))
    assert is_exact and exact == brute > 1000
    approx, is_exact = count_close_pairs(U, 0.18, exact_limit=0, cell_size=64)
    assert not is_exact and 0.95 * exact <= approx <= exact


def _centred_by_hand(X, groups):
    """Slow, obvious per-group centring: normalise, subtract the group mean, normalise again
    (a group of one row is left as it is)."""
    U = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    out = U.copy()
    for g in np.unique(groups):
        m = groups == g
        if m.sum() >= 2:
            out[m] = U[m] - U[m].mean(axis=0)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
def test_centring_equals_denoising_centred_features(seed, tmp_path):
    # centring on the fly (memory-mapped fp32, small blocks) == denoising features centred by hand
    X, vid, trk = make_world(seed, videos=7)
    X = X + np.where(np.char.endswith(vid.astype(str), "1"), 1.5, -0.7)[:, None]   # a video offset
    path = tmp_path / "f.npy"
    np.save(path, X)
    kw = dict(sigma_cst=0.5, sigma_drm=0.4, range_half_width=3)
    ref = denoise(_centred_by_hand(X, vid), vid, trk, **kw)
    got = denoise(path, vid, trk, centre=vid, block_rows=4, **kw)
    np.testing.assert_array_equal(ref.identity, got.identity)
    np.testing.assert_array_equal(ref.status_code, got.status_code)
    assert got.params["centred"] and not ref.params["centred"]


def test_centring_removes_a_camera_offset():
    # two cameras film the same three people; camera B adds a strong common offset. Raw
    # features link nothing across the cameras (and merge camera B's people into one), centred
    # features give exactly the three people, each across both cameras.
    rng = np.random.default_rng(0)
    people = np.eye(8)[:3]                   # the offset (dim 7) is orthogonal to every person
    X, vid, trk, who = [], [], [], []
    for v, offset in (("camA", 0.0), ("camB", 3.0 * np.eye(8)[7])):
        for p in range(3):
            for _ in range(4):
                X.append(people[p] + offset + 0.05 * rng.normal(size=8))
                vid.append(v)
                trk.append(p if v == "camA" else 100 + p)
                who.append(p)
    X, vid, trk, who = np.asarray(X), np.asarray(vid), np.asarray(trk), np.asarray(who)
    kw = dict(sigma_cst=0.3, sigma_drm=0.2, levels="tracklet,video,cross")
    raw = denoise(X, vid, trk, **kw).identity
    centred = denoise(X, vid, trk, centre=vid, **kw).identity
    assert not set(raw[vid == "camA"]) & set(raw[vid == "camB"])
    assert len(np.unique(raw[vid == "camB"])) == 1
    assert len(np.unique(centred)) == 3
    for p in range(3):
        assert len(np.unique(centred[who == p])) == 1


def test_centring_rejects_wrong_groups_and_empty_rows():
    X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(CionError, match="centring groups"):
        denoise(X, np.array(["v"] * 3), np.array([1, 1, 2]), centre=np.array(["v", "v"]))
    with pytest.raises(CionError, match="equal the mean of their video"):
        denoise(X[:2], np.array(["v"] * 2), np.array([1, 2]), centre=np.array(["v", "v"]))


def _whitened_by_hand(U, dims, shrinkage=1.0):
    """Slow, obvious PCA whitening of rows ``U`` (already unit length): project on the top
    ``dims`` eigenvectors of their covariance, divide by sqrt(eigenvalue + shrinkage * mean),
    normalise."""
    cov = np.cov(U.T, bias=True)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dims]
    vals, vecs = vals[order], vecs[:, order]
    Y = (U - U.mean(axis=0)) @ vecs / np.sqrt(vals + shrinkage * vals.mean())
    return Y / np.linalg.norm(Y, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(3))
def test_whitening_equals_denoising_whitened_features(seed, tmp_path):
    X, vid, trk = make_world(seed, D=10, videos=7)
    path = tmp_path / "f.npy"
    np.save(path, X)
    kw = dict(sigma_cst=0.6, sigma_drm=0.5, range_half_width=3)
    ref = denoise(_whitened_by_hand(_centred_by_hand(X, vid), 6), vid, trk, **kw)
    got = denoise(path, vid, trk, centre=vid, whiten=6, block_rows=4, **kw)
    np.testing.assert_array_equal(ref.identity, got.identity)
    np.testing.assert_array_equal(ref.status_code, got.status_code)
    assert got.params["whitened"] == 6


def test_whitening_evens_out_unrelated_distances():
    # one direction carries most of the variance (a background colour that varies a lot):
    # unwhitened, distances between different people spread widely (some pairs come close by
    # chance); whitened, they concentrate.
    from cion.denoise.features import FeatureSource

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 12)) * np.r_[8.0, np.ones(11)] + np.r_[0.0, 3.0, np.zeros(10)]
    raw = FeatureSource(X).block(0, 400)
    white = FeatureSource(X).whiten(12, shrinkage=0.0).block(0, 400)
    i, j = np.triu_indices(400, 1)
    d_raw = 1 - np.einsum("ij,ij->i", raw[i], raw[j])
    d_white = 1 - np.einsum("ij,ij->i", white[i], white[j])
    assert d_white.std() < 0.75 * d_raw.std()


def test_whitening_again_fits_afresh():
    from cion.denoise.features import FeatureSource

    X, _, _ = make_world(0, D=10)
    once = FeatureSource(X).whiten(4).block(0, len(X))
    twice = FeatureSource(X).whiten(6).whiten(4).block(0, len(X))
    np.testing.assert_allclose(once @ once.T, twice @ twice.T, atol=1e-9)   # sign-free


def test_a_prepared_source_is_shared_by_calibration_and_denoising(tmp_path):
    # one fitted centring + whitening, handed to calibrate_thresholds and then to denoise (twice),
    # gives what each of them gives when it fits the same transform itself
    from cion.denoise import calibrate_thresholds
    from cion.denoise.features import prepare_features

    X, vid, trk = make_world(1, D=10, videos=7)
    path = tmp_path / "f.npy"
    np.save(path, X)
    src = prepare_features(path, centre=vid, whiten=6)
    own = calibrate_thresholds(path, vid, trk, range_half_width=3, centre=vid, whiten=6)
    shared = calibrate_thresholds(src, vid, trk, range_half_width=3)
    assert shared == own
    kw = dict(sigma_cst=own["sigma_cst"], sigma_drm=own["sigma_drm"], range_half_width=3)
    ref = denoise(path, vid, trk, centre=vid, whiten=6, block_rows=4, **kw)
    for _ in range(2):                                  # the source survives a denoising pass
        got = denoise(src, vid, trk, block_rows=4, **kw)
        np.testing.assert_array_equal(ref.identity, got.identity)
        np.testing.assert_array_equal(ref.status_code, got.status_code)
    assert got.params["whitened"] == 6 and got.params["centred"]
    assert prepare_features(src) is src
    with pytest.raises(CionError, match="already prepared"):
        denoise(src, vid, trk, centre=vid, **kw)
