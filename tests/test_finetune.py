"""Supervised fine-tuning (BNNeck baseline, docs/finetuning.md): losses against slow references,
the BN neck, the P x K sampler, the batch augmentation, config checks, and an end-to-end run on
the synthetic world that must beat random initialisation on zero-shot mAP."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cion.errors import CionError
from cion.finetune import (BNNeckModel, PKSampler, SupervisedConfig, TrainAugment,
                           batch_hard_triplet, decode_images, finetune_supervised, normalize,
                           smoothed_cross_entropy)


# ------------------------------------------------------------------------------------ losses
def reference_triplet(features, labels, margin, soft):
    """One anchor at a time, plain Python: farthest positive, closest negative."""
    f, y = features.tolist(), labels.tolist()
    losses = []
    for i in range(len(y)):
        pos = [math.dist(f[i], f[j]) for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [math.dist(f[i], f[j]) for j in range(len(y)) if y[j] != y[i]]
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        losses.append(math.log1p(math.exp(gap)) if soft else max(0.0, gap + margin))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_triplet_matches_reference(soft):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        b = int(torch.randint(4, 14, (1,), generator=g))
        labels = torch.randint(0, 4, (b,), generator=g)
        labels[0] = 99                                     # an anchor without any positive
        scale = 0.1 if trial % 2 else 2.0                  # hinge both active and inactive
        features = scale * torch.randn(b, 5, generator=g, dtype=torch.float64)
        got = batch_hard_triplet(features, labels, margin=0.3, soft=soft)
        want = reference_triplet(features, labels, 0.3, soft)
        assert got.item() == pytest.approx(want, abs=1e-6), (trial, soft)


def test_batch_hard_triplet_degenerate_batches_and_gradients():
    same = torch.randn(4, 3, requires_grad=True)
    zero = batch_hard_triplet(same, torch.zeros(4, dtype=torch.long))   # no negatives at all
    zero.backward()
    assert zero.item() == 0.0 and same.grad is not None and torch.all(same.grad == 0)

    base = torch.randn(2, 6)
    dup = base.repeat_interleave(3, 0).requires_grad_(True)      # identical features, 2 ids
    for soft in (False, True):
        dup.grad = None
        loss = batch_hard_triplet(dup, torch.tensor([0, 0, 0, 1, 1, 1]), soft=soft)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(dup.grad).all()
    collapsed = torch.ones(4, 3, requires_grad=True)             # everything identical
    loss = batch_hard_triplet(collapsed, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-4) and torch.isfinite(collapsed.grad).all()
    with pytest.raises(CionError, match="features"):
        batch_hard_triplet(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


def test_smoothed_cross_entropy_formula():
    logits, labels, eps = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0]), 0.1
    logp = logits.log_softmax(1)
    want = -((1 - eps) * logp[torch.arange(6), labels] + eps / 5 * logp.sum(1)).mean()
    assert smoothed_cross_entropy(logits, labels, eps).item() == pytest.approx(want.item(), abs=1e-6)
    with pytest.raises(CionError, match="epsilon"):
        smoothed_cross_entropy(logits, labels, 1.0)


# ----------------------------------------------------------------------------------- BN neck
def linear_backbone(h=8, w=4, dim=6):
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, dim))
    net.feature_dim = dim
    return net


def test_bnneck_train_and_eval_outputs():
    torch.manual_seed(0)
    model = BNNeckModel(linear_backbone(), num_classes=7)
    x = torch.randn(5, 3, 8, 4)
    feats, logits = model.train()(x)
    assert feats.shape == (5, 6) and logits.shape == (5, 7)
    assert torch.allclose(feats, model.backbone(x))
    assert torch.allclose(logits, model.classifier(model.neck(feats)))
    assert model.classifier.bias is None and model.classifier.weight.std().item() < 0.003
    assert not model.neck.bias.requires_grad and torch.all(model.neck.bias == 0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    (logits.square().sum() + feats.sum()).backward()
    opt.step()
    assert torch.all(model.neck.bias == 0)                         # frozen
    model.eval()
    out = model(x)
    assert torch.equal(out, model.backbone(x))                     # before the neck
    with pytest.raises(CionError, match="feature_dim"):
        BNNeckModel(nn.Linear(3, 3), 4)


# ----------------------------------------------------------------------------------- sampler
def test_pk_sampler_batches():
    counts = {10: 6, 11: 1, 12: 2, 13: 5, 14: 4, 15: 9, 16: 3}
    labels = np.repeat(list(counts), list(counts.values()))
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(labels))
    labels = labels[perm]                                          # rows not grouped by identity
    s = PKSampler(labels, p=3, k=4, seed=5)
    batches = s.batches(40)
    assert batches.shape == (40, 12) and batches.dtype == np.int64
    seen = set()
    for b in batches:
        groups = labels[b].reshape(3, 4)
        assert (groups == groups[:, :1]).all()                     # K images of one identity
        assert len(set(groups[:, 0])) == 3                         # P distinct identities
        for g, rows in zip(groups[:, 0], b.reshape(3, 4)):
            if counts[g] >= 4:
                assert len(set(rows)) == 4                         # without replacement
        seen |= set(groups[:, 0])
    assert seen == set(counts) and s.singletons == 1
    assert np.array_equal(batches, PKSampler(labels, 3, 4, seed=5).batches(40))
    first = next(iter(s))
    assert np.array_equal(first, batches[0])
    assert not np.array_equal(batches, PKSampler(labels, 3, 4, seed=6).batches(40))
    with pytest.raises(CionError, match="at least 2"):
        PKSampler(np.zeros(8, dtype=int), p=2, k=4)
    with pytest.raises(CionError, match="lower the batch size"):
        PKSampler(labels, p=8, k=4)


# -------------------------------------------------------------------------------- transforms
def test_augment_flip_crop_erase():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 16, 8, 3), dtype=np.uint8)
    plain = normalize(imgs)
    assert plain.shape == (6, 3, 16, 8) and plain.dtype == torch.float32
    off = TrainAugment(flip_p=0, pad=0, erasing_p=0)
    assert torch.equal(off(imgs, rng), plain)
    flipped = TrainAugment(flip_p=1, pad=0, erasing_p=0)(imgs, rng)
    assert torch.equal(flipped, plain.flip(-1))

    out = TrainAugment(flip_p=0, pad=2, erasing_p=0)(imgs, np.random.default_rng(1))
    black = normalize(np.zeros((1, 1, 1, 3), np.uint8))[0]           # (3, 1, 1)
    padded = F.pad(plain - black, (2, 2, 2, 2)) + black             # black border
    shifts = []
    for i in range(6):
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.allclose(out[i], padded[i, :, dy:dy + 16, dx:dx + 8], atol=1e-5)]
        assert match, f"image {i} is not a crop of the padded image"
        shifts.append(match[0])
    assert len(set(shifts)) > 1                                    # crops differ
    assert TrainAugment().pad_pixels(256) == 10 and TrainAugment().pad_pixels(64) == 2

    for fill in ("zeros", "random"):
        er = TrainAugment(flip_p=0, pad=0, erasing_p=1, erasing_fill=fill)(imgs, rng)
        changed = (er != plain).any(1)                             # (B, H, W)
        for c in changed:
            ys, xs = torch.nonzero(c, as_tuple=True)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert 0.01 <= c.float().mean() <= 0.5                  # area 0.02-0.4, rounded
            if fill == "zeros":
                assert int(box) == int(c.sum())                    # one filled rectangle
        if fill == "zeros":
            assert torch.all(er[changed[:, None].expand_as(er)] == 0)
    with pytest.raises(CionError, match="uint8"):
        off(imgs.astype(np.float32), rng)
    with pytest.raises(CionError, match="erasing_fill"):
        TrainAugment(erasing_fill="mean")


def test_normalisation_matches_extract_features(tmp_path):
    from cion.evaluation.retrieval import embed_paths

    path = tmp_path / "0001_c1s1_000001_01.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 30, 3), dtype=np.uint8)).save(path)
    arr = decode_images([str(path)], (16, 8))
    assert arr.shape == (1, 16, 8, 3) and arr.dtype == np.uint8
    ours = TrainAugment(flip_p=0, pad=0, erasing_p=0)(arr, np.random.default_rng(0))
    theirs = embed_paths(nn.Flatten(), [str(path)], img_size=(16, 8))
    assert torch.allclose(F.normalize(ours.flatten(1), dim=1), theirs, atol=1e-6)


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch_size", 30), ("instances", 1), ("lr", 0.0), ("optimizer", "rmsprop"),
    ("image_size", "big"), ("label_smoothing", 1.0), ("margin", 0.0), ("erasing_p", 1.5),
    ("warmup_steps", -1), ("threads", 0), ("log_every", 0), ("device", "gpu0")]
    + ([("device", "cuda")] if not torch.cuda.is_available() else []))
def test_bad_config_names_the_option(field, value):
    with pytest.raises(CionError, match=f"SupervisedConfig.{field}"):
        SupervisedConfig(**{field: value}).check()


def small_dataset(tmp_path, ids=(1, 2, 3, 4), per_id=3):
    rng = np.random.default_rng(0)
    rows = []
    for pid in ids:
        for j in range(per_id):
            p = tmp_path / f"{pid:04d}_{j}.png"
            Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(p)
            rows.append((p.name, pid))
    df = pd.DataFrame(rows, columns=["path", "identity"])
    df.attrs["root"] = str(tmp_path)
    return df


def test_finetune_rejects_bad_data(tmp_path):
    cfg = SupervisedConfig(steps=2, batch_size=4, instances=2, image_size=(16, 8))
    with pytest.raises(CionError, match="1 identity"):
        finetune_supervised(linear_backbone(16, 8), small_dataset(tmp_path, ids=(7,)), cfg)
    df = small_dataset(tmp_path)
    with pytest.raises(CionError, match="column"):
        finetune_supervised(linear_backbone(16, 8), df.drop(columns="identity"), cfg)
    df.loc[0, "path"] = "missing.png"
    with pytest.raises(CionError, match="do not exist"):
        finetune_supervised(linear_backbone(16, 8), df, cfg)


def test_finetune_is_deterministic(tmp_path, one_torch_thread):
    df = small_dataset(tmp_path)
    df.loc[len(df)] = ["0001_0.png", -1]                          # junk rows are dropped
    cfg = SupervisedConfig(steps=6, batch_size=4, instances=2, image_size=(16, 8),
                           warmup_steps=2, log_every=3, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(finetune_supervised(linear_backbone(16, 8), df, cfg, log=lambda m: None))
    a, b = runs
    assert [h["step"] for h in a.history] == [3, 6]
    assert set(a.history[0]) == {"step", "loss", "ce", "triplet", "lr", "seconds"}
    assert a.model.num_classes == 4 and not a.model.training
    assert a.identities.tolist() == [1, 2, 3, 4]
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


# ---------------------------------------------------------------------------- end to end
def test_finetuning_beats_random_init(tiny_world, one_torch_thread):
    import time

    from cion.finetune import finetune_on_market
    from cion.models.backbone import build_backbone
    from cion.evaluation.retrieval import zero_shot_map

    size, market = (64, 32), tiny_world / "market"
    torch.manual_seed(0)
    backbone = build_backbone("test_resnet", size)
    before = zero_shot_map(backbone, market, size)
    cfg = SupervisedConfig(steps=150, batch_size=32, instances=4, lr=3e-3, warmup_steps=15,
                           image_size=size, log_every=25, seed=0)
    lines = []
    t0 = time.perf_counter()
    result = finetune_on_market(backbone, market, cfg, log=lines.append)
    seconds = time.perf_counter() - t0
    assert len(result.history) == 6 and "20 identities" in lines[0]
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 1.0, losses
    assert result.model.backbone is backbone and not result.model.training
    after = zero_shot_map(result.model, market, size)             # pre-neck features
    print(f"zero-shot mAP: random {before['mAP']:.3f} -> fine-tuned {after['mAP']:.3f} "
          f"({seconds:.1f} s)")
    assert after["mAP"] > before["mAP"] + 0.1 and after["mAP"] > 2 * before["mAP"]
