"""The ``cion finetune`` stage as one callable: backbone (random or pre-trained) -> supervised
BNNeck fine-tuning on a dataset's train split -> ``backbone.safetensors`` + ``finetune.json``,
with mAP / rank-1 / mINP on the dataset's query / gallery split before and after.

    from cion.finetune import SupervisedConfig
    from cion.finetune.cli_stage import run_finetune, format_summary
    report = run_finetune("data/market1501", "runs/ft", arch="vit_small",
                          checkpoint="runs/pretrain/backbone.safetensors",
                          cfg=SupervisedConfig(steps=2000))
    print(format_summary(report))

The written ``backbone.safetensors`` has the key layout (and ``arch`` metadata) of a
pre-training ``backbone.safetensors``: ``load_backbone(arch, path, img_size)`` reads it, and for
ReIDZoo archs ``create_model(arch, checkpoint=path)``; ``cion evaluate --model path`` reads any.
Training runs on ``cfg.device`` (``--device``); the before / after scoring on the CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cion.errors import CionError
from cion.finetune.supervised import SupervisedConfig, finetune_supervised

#: identities that are never training classes: Market-1501 junk (-1) and distractors (0)
_MARKET_NAMES = ("Market-1501",)
FORMAT = "cion-finetune-1"


def _check_arch(arch: str) -> None:
    from cion.pretrain.backbone import TEST_ARCHS

    try:
        from cion.models import list_models
        zoo = list_models()
    except ImportError:  # pragma: no cover - the zoo ships with cion
        zoo = []
    if arch in TEST_ARCHS or arch in zoo:
        return
    import difflib

    known = list(TEST_ARCHS) + list(zoo)
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise CionError(f"unknown --arch '{arch}'.{hint} Use a ReIDZoo name (`cion zoo list`) or "
                    f"one of the test models {', '.join(TEST_ARCHS)}")


def _prepare_out(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, before any slow work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise CionError(f"--out {out}: cannot write there ({err.strerror or err}). Fix: choose "
                        "a writable directory") from None


def _check_checkpoint(checkpoint: Path) -> None:
    if not checkpoint.is_file():
        raise CionError(f"--checkpoint {checkpoint} does not exist"
                        f"{' (it is a directory)' if checkpoint.is_dir() else ''}. Fix: pass the "
                        "backbone.safetensors a pre-training run wrote (or a ReIDZoo checkpoint)")


def _build(arch: str, checkpoint: Path | None, img_size: tuple[int, int], seed: int) -> nn.Module:
    """Random init (seeded), or pre-trained weights (:func:`load_backbone`): our safetensors
    backbone for any arch, or for ReIDZoo archs also the authors' ``.pth``."""
    from cion.pretrain.backbone import build_backbone, load_backbone

    torch.manual_seed(seed)
    if checkpoint is None:
        return build_backbone(arch, img_size)
    _check_checkpoint(checkpoint)
    return load_backbone(arch, checkpoint, img_size)


def _train_rows(ds):
    """The dataset's train split without junk (< 0) and, for Market-1501, distractors (0)."""
    train = ds.train
    if train is None or len(train) == 0:
        raise CionError(f"{ds.root}: the {ds.name} dataset has no training split (train images "
                        "with identities). Fix: add it (folder: train/<identity>/<image>; table: "
                        "rows with split == 'train'), or fine-tune on another dataset")
    lowest = 1 if ds.name in _MARKET_NAMES else 0
    keep = train[train["identity"].to_numpy() >= lowest]
    keep.attrs.update(train.attrs)
    if len(keep) == 0:
        raise CionError(f"{ds.root}: no labelled training images (identity >= {lowest}) in the "
                        f"{ds.name} train split")
    return keep


def score(model: nn.Module, ds, img_size: tuple[int, int], batch_size: int = 128) -> dict:
    """mAP / rank-1 / mINP of ``model`` (eval mode, CPU) on ``ds.query`` vs ``ds.gallery``
    (:func:`cion.pretrain.evaluate.retrieval_scores`, as ``zero_shot_map`` on a Market layout)."""
    from cion.data.manifest import resolve_paths
    from cion.pretrain.evaluate import retrieval_scores

    def split(df):
        return resolve_paths(df), df["identity"].to_numpy(), df["camera"].to_numpy()

    return retrieval_scores(model, split(ds.query), split(ds.gallery), img_size, batch_size)


def run_finetune(data: str | os.PathLike, out: str | os.PathLike, *, arch: str,
                 dataset: str = "market1501", checkpoint: str | os.PathLike | None = None,
                 cfg: SupervisedConfig | None = None, evaluate: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Fine-tune backbone ``arch`` on the train split of ``dataset`` at ``data`` into ``out``.

    Args:
        data: dataset folder (or table file), read by :func:`cion.data.readers.read_dataset`.
        out: output directory (created): ``backbone.safetensors`` (the backbone's state dict,
            metadata ``arch``, ``img_size``, ...) and ``finetune.json`` (the returned dict).
        arch: a ReIDZoo name or ``test_resnet`` / ``test_vit``.
        dataset: market1501 | msmt17 | folder | table. Training classes are the train split's
            identities >= 0 (>= 1 for Market-1501: -1 junk and 0 distractors are excluded).
        checkpoint: initial weights (default: random, seeded by ``cfg.seed``): a
            ``backbone.safetensors`` from ``cion pretrain`` (or from this stage), or for ReIDZoo
            archs the authors' ``.pth``.
        cfg: the recipe, :class:`SupervisedConfig`; its ``image_size`` is also the evaluation
            and backbone input size.
        evaluate: also score query vs gallery before and after fine-tuning.
        log: receives progress lines.

    Returns the content of ``finetune.json`` plus ``json`` and ``backbone`` (paths): ``arch``,
    ``dataset``, ``data``, ``checkpoint``, ``config``, ``num_images``, ``identities`` (dataset
    identity of each classifier class), ``history``, ``seconds`` and, when ``evaluate``,
    ``scores`` = ``{"before": {mAP, rank1, mINP}, "after": {...}}`` (fractions in [0, 1]).
    """
    from cion.data.readers import read_dataset
    from cion.models.checkpoint import save_backbone

    t_start = time.perf_counter()
    cfg = (cfg or SupervisedConfig()).check()
    size = tuple(int(v) for v in cfg.image_size)
    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    _check_arch(arch)
    if checkpoint is not None:
        _check_checkpoint(checkpoint)
    _prepare_out(out)
    try:
        ds = read_dataset(dataset, data)
    except CionError as err:      # the readers' hints name `cion evaluate`'s --root; ours is --data
        raise CionError(str(err).replace("--root ", "--data ")) from None
    for line in ds.describe().splitlines():
        log(line)
    train = _train_rows(ds)
    backbone = _build(arch, checkpoint, size, cfg.seed)
    log(f"backbone {arch}: {sum(p.numel() for p in backbone.parameters()) / 1e6:.2f}M "
        f"parameters, {'weights from ' + str(checkpoint) if checkpoint else 'random init'}")

    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    scores, t_eval = {}, 0.0
    try:
        if evaluate:
            t0 = time.perf_counter()
            scores["before"] = score(backbone, ds, size)
            t_eval += time.perf_counter() - t0
            log(f"before fine-tuning: {_line(scores['before'])}  ({t_eval:.1f}s)")
        t0 = time.perf_counter()
        result = finetune_supervised(backbone, train, cfg, log)
        t_train = time.perf_counter() - t0
        trained = result.model.backbone.eval()
        if evaluate:
            t0 = time.perf_counter()
            scores["after"] = score(trained, ds, size)
            t_eval += time.perf_counter() - t0
            log(f"after fine-tuning:  {_line(scores['after'])}")
    finally:
        torch.set_num_threads(threads_before)

    config = dataclasses.asdict(cfg)
    config["image_size"] = list(size)
    backbone_path = out / "backbone.safetensors"
    save_backbone(trained, backbone_path, {
        "arch": arch, "img_size": f"{size[0]}x{size[1]}", "steps": cfg.steps,
        "init": str(checkpoint) if checkpoint else "random",
        "dataset": ds.name, "source": "cion finetune (supervised BNNeck, pre-neck backbone)"})
    report = {
        "format": FORMAT, "arch": arch, "dataset": ds.name, "reader": dataset, "version": ds.version,
        "data": str(data), "checkpoint": str(checkpoint) if checkpoint else None,
        "img_size": list(size), "config": config, "num_images": int(len(train)),
        "num_identities": int(len(result.identities)),
        "identities": [int(i) for i in np.asarray(result.identities)],
        "history": result.history,
        "seconds": {"train": round(t_train, 3), "evaluate": round(t_eval, 3),
                    "total": round(time.perf_counter() - t_start, 3)},
    }
    if evaluate:
        report["scores"] = scores
    from cion.fileio import atomic_write

    json_path = out / "finetune.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    return dict(report, json=str(json_path), backbone=str(backbone_path))


def _line(s: dict) -> str:
    return f"mAP {100 * s['mAP']:.2f}%  rank-1 {100 * s['rank1']:.2f}%  mINP {100 * s['mINP']:.2f}%"


def format_summary(report: dict) -> str:
    """A short plain-text table of a :func:`run_finetune` report (percent)."""
    h = report["history"][-1] if report["history"] else {}
    lines = [f"{report['arch']} fine-tuned on {report['dataset']} {report.get('version', '')}"
             .rstrip() + f": {report['num_images']} images of {report['num_identities']} "
             f"identities, {report['config']['steps']} steps, {report['seconds']['train']:.1f}s"
             + (f", final loss {h['loss']:.3f}" if h else "")]
    scores = report.get("scores")
    if scores:
        head = f"{'metric':<8}{'before':>10}{'after':>10}"
        lines += [head, "-" * len(head)]
        for key, label in (("mAP", "mAP"), ("rank1", "Rank-1"), ("mINP", "mINP")):
            lines.append(f"{label:<8}{100 * scores['before'][key]:>9.2f}%"
                         f"{100 * scores['after'][key]:>9.2f}%")
    if "backbone" in report:
        lines.append(f"backbone -> {report['backbone']}")
        lines.append(f"numbers  -> {report['json']}")
        lines.append(f"evaluate it again: {evaluate_hint(report)}")
    return "\n".join(lines)


def evaluate_hint(report: dict) -> str:
    """How to score the written backbone later (any arch: ``cion evaluate`` reads the arch from
    the file's metadata)."""
    h, w = report["img_size"]
    return (f"cion evaluate --model {report['backbone']} --dataset {report['reader']} "
            f"--root {report['data']} --img-size {h}x{w}")
