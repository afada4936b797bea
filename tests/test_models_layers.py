"""Numerical checks of the parts that are ours or differ from timm: IBN-a, last stride 1, the ICS ViT
stem, VOLO position resampling, CION's RepViT squeeze-excite, re-parameterisation and ONNX export."""
from __future__ import annotations

import cion.compat  # noqa: F401  (must precede torchvision / timm)

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cion.errors import CionError
from cion.models import create_model
from cion.models.builders import _resample_grid_pos_embed
from cion.models.export import _static_vit, export_onnx
from cion.models.ibn import IBN
from cion.models.reparam import reparameterize


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN/IN/LN affine and running statistics, so folding/identity bugs show up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)


def _ibn_reference(x, ibn: IBN, training: bool):
    """IN (per sample, per channel, biased variance) on the first half, BN on the rest, by hand."""
    h, eps = ibn.half, 1e-5
    a, b = x[:, :h], x[:, h:]
    a = (a - a.mean((2, 3), keepdim=True)) / torch.sqrt(a.var((2, 3), unbiased=False, keepdim=True) + eps)
    a = a * ibn.IN.weight[None, :, None, None] + ibn.IN.bias[None, :, None, None]
    if training:
        mean, var = b.mean((0, 2, 3), keepdim=True), b.var((0, 2, 3), unbiased=False, keepdim=True)
    else:
        mean, var = ibn.BN.running_mean[None, :, None, None], ibn.BN.running_var[None, :, None, None]
    b = (b - mean) / torch.sqrt(var + eps) * ibn.BN.weight[None, :, None, None] + ibn.BN.bias[None, :, None, None]
    return torch.cat([a, b], 1)


@pytest.mark.parametrize("training", [True, False])
def test_ibn_matches_hand_written_reference(training):
    ibn = IBN(64)
    _randomise_norms(ibn)
    x = torch.randn(4, 64, 8, 6) * 3 + 1
    ibn.train(training)
    expected = _ibn_reference(x, ibn, training)
    torch.testing.assert_close(ibn(x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ibn(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)
    assert ibn.half == 32 and ibn.IN.running_mean is None, "IN keeps no running statistics"


def test_resnet_ibn_structure_and_last_stride():
    model = create_model("resnet50_ibn").eval()
    for stage in ("layer1", "layer2", "layer3"):
        assert all(isinstance(block.bn1, IBN) for block in getattr(model, stage))
    assert all(isinstance(block.bn1, nn.BatchNorm2d) for block in model.layer4)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(1, 3, 256, 128))
    assert fmap.shape == (1, 2048, 16, 8), "last stride 1: 256x128 -> 16x8"
    r18 = create_model("resnet18").eval()
    with torch.no_grad():
        assert r18.forward_features(torch.randn(1, 3, 256, 128)).shape == (1, 512, 16, 8)


def test_resnet_residual_branches_start_non_zero():
    """DINO / IBN-Net initialisation: the last BN of each block starts at weight 1 (timm's
    zero_init_last would start it at 0, which stalls from-scratch self-distillation)."""
    from cion.models.backbone import build_backbone

    for model in (create_model("resnet18"), create_model("resnet50_ibn"), build_backbone("resnet_micro")):
        last_bns = [getattr(block, "bn3", None) or block.bn2
                    for stage in ("layer1", "layer2", "layer3", "layer4") for block in getattr(model, stage)]
        assert last_bns and all(torch.all(bn.weight == 1) for bn in last_bns)


def test_ics_stem_matches_hand_written_convolutions():
    model = create_model("vit_tiny").eval()
    _randomise_norms(model)
    pe = model.patch_embed
    x = torch.randn(2, 3, 256, 128)
    c = pe.conv
    h = F.conv2d(x, c[0].weight, stride=2, padding=3)
    h = F.relu(_ibn_reference(h, c[1], False))
    h = F.relu(_ibn_reference(F.conv2d(h, c[3].weight, padding=1), c[4], False))
    h = F.conv2d(h, c[6].weight, padding=1)
    h = F.relu(F.batch_norm(h, c[7].running_mean, c[7].running_var, c[7].weight, c[7].bias, False, 0.0, 1e-5))
    h = F.conv2d(h, pe.proj.weight, pe.proj.bias, stride=8)          # (2, 192, 16, 8)
    with torch.no_grad():
        tokens = pe(x)                                                # NHWC in the dynamic-size ViT
    assert tokens.shape == (2, 16, 8, 192)
    torch.testing.assert_close(tokens, h.permute(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_vit_dynamic_size_equals_a_fixed_size_copy():
    model = create_model("vit_tiny").eval()
    for size in ((256, 128), (128, 64)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), _static_vit(model, size)(x), rtol=1e-5, atol=1e-5)
    fixed = _static_vit(model, (128, 64))
    assert fixed.pos_embed.shape == (1, 1 + 8 * 4, 192) and model.pos_embed.shape == (1, 1 + 16 * 8, 192)


def test_volo_equals_timm_at_native_size_and_resamples_otherwise():
    ours = create_model("volo_d1").eval()
    ref = timm.create_model("volo_d1_224", pretrained=False, num_classes=0, img_size=(256, 128)).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    pos = torch.randn(1, 16, 8, 5)
    assert _resample_grid_pos_embed(pos, (16, 8)) is pos
    small = _resample_grid_pos_embed(pos, (8, 4))
    assert small.shape == (1, 8, 4, 5)
    # a constant embedding stays constant under bicubic resampling
    torch.testing.assert_close(_resample_grid_pos_embed(torch.full((1, 16, 8, 3), 0.7), (8, 4)),
                               torch.full((1, 8, 4, 3), 0.7))


def test_swin_uses_window_8_tables_everywhere():
    model = create_model("swin_tiny")
    tables = [m for n, m in model.named_parameters() if n.endswith("relative_position_bias_table")]
    assert tables and all(t.shape[0] == 15 * 15 for t in tables)


def test_repvit_squeeze_excite_is_cions():
    model = create_model("repvit_m0_9").eval()
    se = model.stages[0].blocks[0].se
    assert se.fc1.out_channels == 12, "48 channels / 4 rounded to 4 (timm would use 16)"
    x = torch.randn(2, 48, 8, 4)
    with torch.no_grad():
        s = F.relu(se.fc1(x.mean((2, 3), keepdim=True)))
        expected = x * (F.relu6(se.fc2(s) + 3.0) / 6.0)             # hard-sigmoid gate
        torch.testing.assert_close(se(x), expected)


@pytest.mark.parametrize("name", ["repvit_m0_9", "fastvit_s12"])
def test_reparameterisation_keeps_outputs(name):
    model = create_model(name)
    _randomise_norms(model, seed=1)
    model.eval()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        before = model(x)
        fused = reparameterize(model)                       # a copy; the original stays unfused
        after = fused(x)
        again = model(x)
    assert fused.reparameterized and fused.feature_dim == model.feature_dim
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())
    scale = before.abs().max()
    assert (after - before).abs().max() <= 1e-4 * scale, float((after - before).abs().max() / scale)
    torch.testing.assert_close(again, before)


def test_reparameterise_refuses_other_families():
    with pytest.raises(CionError, match="RepViT and FastViT"):
        reparameterize(create_model("resnet18"))


@pytest.mark.parametrize("name", ["resnet18_ibn", "vit_tiny", "volo_d1"])
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    model = create_model(name)
    _randomise_norms(model, seed=2)
    report = export_onnx(model, tmp_path / f"{name}.onnx", img_size=(128, 64))
    assert (tmp_path / f"{name}.onnx").stat().st_size > 100_000
    assert report.feature_dim == model.feature_dim and report.max_abs_diff < 1e-3
