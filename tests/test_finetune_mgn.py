"""MGN: structure (shared / copied layers, stride 1), head shapes, test-feature width, each loss
term and weight against slow references, CircleSoftmax, and backbone freezing."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cion.errors import CionError
from cion.finetune.mgn import (CE_WEIGHT, HEADS, MGN, TRIPLET_GROUPS, TRIPLET_WEIGHT, CircleSoftmax,
                               freeze_mgn_backbone, mgn_archs, mgn_loss, mgn_supported)
from cion.models.backbone import build_backbone


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return MGN("test_resnet", num_classes=5)


def test_structure_and_shapes(tiny):
    backbone = build_backbone("test_resnet")
    model = MGN(backbone, num_classes=5)
    # shared modules are the backbone's own; each branch has its own copy of layer4
    assert model.shared[-1] is backbone.layer3[0]
    w = [b[1][0].conv1.weight for b in model.branches]
    assert all(torch.equal(x, backbone.layer4[0].conv1.weight) for x in w)
    assert len({x.data_ptr() for x in w}) == 3
    assert all(m.stride == (1, 1) for b in model.branches for m in b.modules()
               if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(4, 3, 96, 32)
    out = model(x)
    assert [f.shape for f in out["features"]] == [(4, 8)] * 8
    assert [lg.shape for lg in out["logits"]] == [(4, 5)] * 8
    # every branch map keeps layer3's resolution (stride 1): 96x32 -> 6x2 after the shared part
    shared = model.shared(x)
    assert all(b(shared).shape[2:] == shared.shape[2:] for b in model.branches)
    model.eval()
    f = model(x)
    assert f.shape == (4, 64) and model.feature_dim == 64
    assert torch.allclose(f.norm(dim=1), torch.ones(4))
    with pytest.raises(CionError, match="taller"):
        model(torch.randn(2, 3, 32, 32))


def test_resnet50_test_feature_is_2048():
    torch.manual_seed(0)
    model = MGN("resnet50", num_classes=10).eval()
    assert model.reduce_dim == 256 and model.channels == 2048
    with torch.no_grad():
        f = model(torch.randn(2, 3, 64, 32))
    assert f.shape == (2, 2048)


def test_arch_support():
    assert mgn_supported("resnet50_ibn") and mgn_supported("test_resnet")
    assert not mgn_supported("test_vit") and "resnet50_ibn" in mgn_archs()
    with pytest.raises(CionError, match="MGN fits: .*resnet50_ibn"):
        MGN("test_vit", 5)
    with pytest.raises(CionError, match="MGN fits"):
        MGN(build_backbone("test_vit", (64, 32)), 5)


def _smoothed_ce(logits, y, eps=0.1):
    out = []
    for row, t in zip(logits, y.tolist()):
        logp = row - torch.logsumexp(row, 0)
        k = len(row)
        out.append(-sum(((1 - eps) + eps / k if j == t else eps / k) * logp[j] for j in range(k)))
    return torch.stack(out).mean()


def _soft_triplet(f, y):
    losses = []
    for i in range(len(y)):
        d = [(f[i] - f[j]).pow(2).sum().sqrt() for j in range(len(y))]
        pos = [d[j] for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [d[j] for j in range(len(y)) if y[j] != y[i]]
        losses.append(math.log1p(math.exp(float(max(pos) - min(neg)))))
    return sum(losses) / len(losses)


def test_loss_terms_and_weights(tiny):
    y = torch.tensor([0, 0, 1, 1, 3, 3])
    out = tiny(torch.randn(6, 3, 64, 32))
    total, terms = mgn_loss(out, y)
    assert set(terms) == {f"ce_{h}" for h in HEADS} | {f"triplet_{g}" for g in TRIPLET_GROUPS}
    for h, lg in zip(HEADS, out["logits"]):
        assert torch.allclose(terms[f"ce_{h}"], _smoothed_ce(lg.detach(), y), atol=1e-5)
    feats = [f.detach() for f in out["features"]]
    # the triplet features are taken after the BN (batch statistics: zero mean per column)
    assert all(f.mean(0).abs().max() < 1e-5 for f in feats)
    groups = {"b1": feats[0], "b2": feats[1], "b3": feats[2],
              "b2_parts": torch.cat(feats[3:5], 1), "b3_parts": torch.cat(feats[5:8], 1)}
    for g, f in groups.items():
        assert abs(terms[f"triplet_{g}"].item() - _soft_triplet(f, y)) < 1e-4
    expected = (sum(_smoothed_ce(lg.detach(), y) for lg in out["logits"]) / 8
                + 0.2 * sum(_soft_triplet(f, y) for f in groups.values()))
    assert CE_WEIGHT == 1 / 8 and TRIPLET_WEIGHT == 0.2
    assert abs(total.item() - float(expected)) < 1e-4
    total.backward()
    assert all(p.grad is not None for p in tiny.heads.parameters() if p.requires_grad)


def test_circle_softmax_against_formula():
    torch.manual_seed(1)
    head = CircleSoftmax(6, 4, scale=64, margin=0.35)
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    logits = head(x, y).detach()
    cos = F.normalize(x) @ F.normalize(head.weight.detach()).T
    for i in range(5):
        for j in range(4):
            if j == y[i]:
                ref = 64 * max(0.0, 1.35 - cos[i, j]) * (cos[i, j] - 0.65)
            else:
                ref = 64 * max(0.0, cos[i, j] + 0.35) * (cos[i, j] - 0.35)
            assert abs(float(logits[i, j]) - float(ref)) < 1e-4
    model = MGN("test_resnet", 5, classifier="circle")
    out = model(torch.randn(4, 3, 64, 32), torch.tensor([0, 0, 1, 1]))
    assert out["logits"][0].shape == (4, 5)


def test_freezing(tiny):
    freeze_mgn_backbone(tiny, True)
    tiny.train()                                   # stays frozen through .train()
    frozen = [tiny.shared, tiny.branches]
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(m.training for m in list(tiny.heads.modules()) + list(tiny.extra_bns.modules()))
    bn_frozen = tiny.shared[1].running_mean.clone()
    bn_extra = tiny.extra_bns[0].running_mean.clone()
    total, _ = mgn_loss(tiny(torch.randn(4, 3, 64, 32)), torch.tensor([0, 0, 1, 1]))
    total.backward()
    assert all(p.grad is None and not p.requires_grad for f in frozen for p in f.parameters())
    assert tiny.heads[0].reduce.weight.grad is not None and tiny.extra_bns[2].weight.grad is not None
    assert torch.equal(tiny.shared[1].running_mean, bn_frozen)           # eval: stats fixed
    assert not torch.equal(tiny.extra_bns[0].running_mean, bn_extra)     # extra BN trains
    freeze_mgn_backbone(tiny, False)
    assert all(m.training for f in frozen for m in f.modules())
    assert all(p.requires_grad for f in frozen for p in f.parameters())
