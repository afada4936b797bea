"""Write stand-ins for the authors' released pre-training checkpoints (for tests; the real ones are gated).

Given a state-dict *layout* (``[[key, shape, dtype], ...]`` for backbone and head, as in
``shared/reference/reidzoo/<arch>.json``), :func:`write_fake_official_checkpoint` writes a file in
the authors' format: ``torch.save`` of a dict with ``student``, ``teacher``, ``optimizer`` (AdamW
state, two parameter groups), ``epoch``, ``args`` (an ``argparse.Namespace``), ``Loss`` (``center``)
and ``fp16_scaler``, with exactly the layout's keys, shapes and dtypes and random values.

Size: a real ViT-B checkpoint is over a gigabyte (the 65336-row head, student, teacher and two
AdamW moments). To keep tests fast, every float tensor here is a strided view into one shared pool
of random numbers (each at its own random offset, strides (.., 13, 7, 1)), which ``torch.save``
stores once: the file is a few megabytes yet every tensor has its full shape and its own values.
Index buffers (``relative_position_index``) get their true values, since loaders may verify them,
and BN running variances are positive, so a model loaded from the file computes finite features.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional

import torch

_STRIDES = (1, 7, 13, 31, 61, 127)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


def _extent(shape) -> int:
    strides = _STRIDES[:len(shape)][::-1]
    return 1 + sum((d - 1) * s for d, s in zip(shape, strides)) if all(shape) else 1


def swin_relative_position_index(window: int) -> torch.Tensor:
    """The (window^2, window^2) int64 relative-position index of a Swin window attention."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)   # (N, N, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class _Pool:
    """Random views: ``take(shape)`` returns a tensor of ``shape`` backed by the shared random pool."""

    def __init__(self, size: int, generator: torch.Generator):
        # small like trained weights, so a deep net on these values stays finite
        self.values = 0.05 * torch.randn(size, generator=generator)
        self.gen = generator

    def take(self, shape, dtype: torch.dtype) -> torch.Tensor:
        shape = tuple(int(d) for d in shape)
        if dtype == torch.int64:   # num_batches_tracked (scalars) and the like: small, stored as is
            return torch.randint(0, 10_000, shape, generator=self.gen, dtype=torch.int64)
        extent = _extent(shape)
        if extent > self.values.numel():
            raise ValueError(f"pool too small for {shape}")
        offset = int(torch.randint(0, self.values.numel() - extent + 1, (1,), generator=self.gen))
        view = self.values.as_strided(shape, _STRIDES[:len(shape)][::-1], offset)
        return view if dtype == torch.float32 else view.to(dtype)


def _tensor_for(key: str, shape, dtype: str, pool: _Pool) -> torch.Tensor:
    if key.endswith("relative_position_index"):
        window = int(round(math.sqrt(shape[0])))
        return swin_relative_position_index(window).reshape(shape)
    if key.endswith("running_var"):   # a variance is positive (1-D and small: materialised)
        return pool.take(shape, _DTYPES[dtype]).abs() + 1.0
    return pool.take(shape, _DTYPES[dtype])


def _is_param(key: str, dtype: str) -> bool:
    return dtype != "int64" and not key.endswith(("running_mean", "running_var"))


def write_fake_official_checkpoint(layout: dict, path, seed: int = 0, pool_size: int = 1 << 20,
                                   teacher_only: bool = False) -> dict[str, torch.Tensor]:
    """Write an authors'-format checkpoint for ``layout`` to ``path``; return the teacher backbone tensors.

    ``layout`` needs ``backbone`` and ``head`` (``[key, shape, dtype]`` lists), ``teacher_prefix``,
    ``head_prefix`` and ``arch``. The returned dict maps backbone keys (no prefix) to the values
    written in ``teacher``; the ``student`` entry holds different values (its own offsets), so a
    loader that took the student by mistake is caught.
    """
    gen = torch.Generator().manual_seed(seed)
    pool = _Pool(pool_size, gen)
    teacher_bb = {k: _tensor_for(k, s, d, pool) for k, s, d in layout["backbone"]}
    teacher_head = {k: _tensor_for(k, s, d, pool) for k, s, d in layout["head"]}
    teacher_prefix, head_prefix = layout["teacher_prefix"], layout["head_prefix"]
    teacher = {teacher_prefix + k: v for k, v in teacher_bb.items()}
    teacher.update({head_prefix + k: v for k, v in teacher_head.items()})
    out: dict = {"teacher": teacher}
    if not teacher_only:
        student = {"module.backbone." + k: _tensor_for(k, s, d, pool) for k, s, d in layout["backbone"]}
        student.update({"module.head." + k: _tensor_for(k, s, d, pool) for k, s, d in layout["head"]})
        params = [(k, v) for k, v in student.items()
                  if _is_param(k, str(v.dtype).replace("torch.", ""))]
        regularized = [i for i, (k, v) in enumerate(params) if v.ndim > 1 and not k.endswith(".bias")]
        not_regularized = [i for i, (k, v) in enumerate(params) if i not in set(regularized)]
        # AdamW moments alias the student tensors: same shapes, no extra storage in the file
        state = {i: {"step": torch.tensor(1000.0), "exp_avg": v, "exp_avg_sq": v}
                 for i, (k, v) in enumerate(params)}
        group = dict(lr=1e-6, betas=(0.9, 0.999), eps=1e-8, amsgrad=False, foreach=None, maximize=False,
                     capturable=False, differentiable=False, fused=None)
        out.update(
            student=student,
            optimizer={"state": state, "param_groups": [dict(group, weight_decay=0.4, params=regularized),
                                                         dict(group, weight_decay=0.0, params=not_regularized)]},
            epoch=100,
            args=argparse.Namespace(arch=layout["arch"], out_dim=65336, use_bn_in_head=False,
                                    norm_last_layer=True, use_fp16=True, lr=0.0005, batch_size_per_gpu=120,
                                    local_crops_number=8, global_crops_scale=(0.8, 1.0),
                                    local_crops_scale=(0.05, 0.8), output_dir="./log", seed=0),
            Loss={"center": pool.take((1, 65336), torch.float32)},
            fp16_scaler={"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                         "growth_interval": 2000, "_growth_tracker": 17},
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return teacher_bb


def load_layouts(path) -> dict[str, dict]:
    """Read a (gzipped) JSON mapping arch -> layout (``tests/data/reidzoo_layouts.json.gz``)."""
    import gzip
    import json

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        data = json.load(fh)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def layout_of(arch: str, layouts: Optional[dict] = None, path=None) -> dict:
    """One layout by arch name from ``layouts`` or the file at ``path``."""
    layouts = layouts if layouts is not None else load_layouts(path)
    return layouts[arch]
