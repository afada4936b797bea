"""ONNX export of ReIDZoo backbones with an onnxruntime check that the outputs match PyTorch."""
from __future__ import annotations

import cion.compat  # noqa: F401  (must precede torchvision / timm)

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cion.errors import CionError


def _static_vit(model: nn.Module, img_size) -> nn.Module:
    """A copy of a dynamic-size ViT fixed to ``img_size``: position embedding resampled once, outside
    the graph (ONNX has no antialiased bicubic resize), so the exported graph only adds it."""
    import copy

    from timm.layers import resample_abs_pos_embed

    model = copy.deepcopy(model)
    pe = model.patch_embed
    grid = pe.dynamic_feat_size(tuple(img_size))
    with torch.no_grad():
        pos = resample_abs_pos_embed(model.pos_embed.data, new_size=list(grid), old_size=list(pe.grid_size),
                                     num_prefix_tokens=model.num_prefix_tokens)
    model.pos_embed = nn.Parameter(pos)
    pe.img_size, pe.grid_size, pe.num_patches = tuple(img_size), grid, grid[0] * grid[1]
    pe.flatten, pe.output_fmt, pe.strict_img_size = True, "NCHW", True
    model.dynamic_img_size = False
    return model


@contextlib.contextmanager
def _static_fold():
    """During export, give ``F.fold`` (VOLO's outlook attention) a constant output size.

    The TorchScript exporter can only translate ``col2im`` with a constant output size, while VOLO
    computes it from the traced input shape; the image size is fixed in the exported graph anyway.
    """
    original = F.fold

    def fold(input, output_size, *args, **kwargs):
        return original(input, tuple(int(s) for s in output_size), *args, **kwargs)

    F.fold = fold
    try:
        yield
    finally:
        F.fold = original


@dataclass
class ExportReport:
    """Result of :func:`export_onnx`: file, input size, and the largest |onnx - torch| difference."""

    path: str
    input_shape: tuple[int, ...]
    feature_dim: int
    max_abs_diff: Optional[float]
    opset: int

    def describe(self) -> str:
        check = (f"onnxruntime max |diff| {self.max_abs_diff:.2e}" if self.max_abs_diff is not None
                 else "not checked")
        return (f"wrote {self.path}: input {list(self.input_shape)} (batch dynamic) -> "
                f"(B, {self.feature_dim}); {check}")


def export_onnx(model: nn.Module, path, img_size=(256, 128), batch: int = 2, opset: int = 18,
                check: bool = True, atol: float = 1e-3, seed: int = 0) -> ExportReport:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis; verify with onnxruntime.

    The graph takes ``images`` float32 (B, 3, H, W) with H, W = ``img_size`` and returns
    ``features`` (B, D). With ``check``, a random batch (and its first image alone, to prove the batch
    axis is dynamic) is run through both, and the export fails with :class:`CionError` if any output
    differs by more than ``atol * max(1, max|features|)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if getattr(model, "dynamic_img_size", False) and hasattr(model, "pos_embed"):
        model = _static_vit(model, img_size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *img_size, generator=gen)
    with torch.no_grad():
        ref = model(x)
        with warnings.catch_warnings(), _static_fold():
            warnings.simplefilter("ignore")
            # the TorchScript-based exporter: no extra dependency (the dynamo one needs onnxscript)
            torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
    diff = None
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            raise CionError("the ONNX check needs onnxruntime, an optional dependency. Fix: "
                            "pip install 'cion-reid[export]', or export with --no-check") from None

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        got = sess.run(["features"], {"images": x.numpy()})[0]
        one = sess.run(["features"], {"images": x[:1].numpy()})[0]   # the batch axis must be dynamic
        diff = float(max(np.abs(got - ref.numpy()).max(), np.abs(one - ref[:1].numpy()).max()))
        tol = atol * max(1.0, float(ref.abs().max()))   # absolute, relative for large features
        if got.shape != tuple(ref.shape) or one.shape != (1, ref.shape[1]) or not diff <= tol:
            raise CionError(f"ONNX check failed for {path}: onnxruntime output {got.shape} differs from "
                            f"PyTorch {tuple(ref.shape)} by up to {diff:.3g} (> {tol:.3g})")
    return ExportReport(str(path), tuple(x.shape), int(ref.shape[1]), diff, opset)
