"""Zero-shot kNN retrieval of an in-memory backbone on a query / gallery split.

Images are resized to the backbone's input size, ImageNet-normalised, embedded, L2-normalised;
distances are cosine; mAP / CMC / mINP by :func:`cion.evaluation.evaluate_rank` (the Market-1501
protocol of torchreid's ``eval_market1501``, see :mod:`cion.evaluation.rank`). This is the
scorer of the training stages (pre-training benchmarks, the demo, fine-tuning): small sets held
in memory. ``cion evaluate`` (:mod:`cion.evaluation.pipeline`) is the file-based, memory-bounded
counterpart for whole benchmarks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cion.data.imagenet import IMAGENET_MEAN, IMAGENET_STD


def image_tensor(paths: list[str], img_size=(256, 128)) -> torch.Tensor:
    """(N, 3, H, W) float32 images resized to ``img_size`` (H, W), ImageNet-normalised."""
    h, w = img_size
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    from cion.data.images import read_rgb       # an unreadable file: one line naming it

    arr = np.stack([np.asarray(read_rgb(p).resize((w, h), Image.BILINEAR)) for p in paths])
    return (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255 - mean) / std


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 128,
          device="cpu") -> torch.Tensor:
    """(N, D) L2-normalised features of (N, 3, H, W) ``images``, in eval mode."""
    was = model.training
    model.eval()
    out = [F.normalize(model(images[s:s + batch_size].to(device)).float(), dim=1).cpu()
           for s in range(0, len(images), batch_size)]
    model.train(was)
    return torch.cat(out)


def embed_paths(model: torch.nn.Module, paths: list[str], img_size=(256, 128),
                batch_size: int = 128, device="cpu") -> torch.Tensor:
    """(N, D) L2-normalised features of the images at ``paths`` resized to ``img_size`` (H, W).
    (:func:`cion.extract.extract_features` is the file-based extractor of ``cion extract``.)"""
    return torch.cat([embed(model, image_tensor(paths[s:s + batch_size], img_size), batch_size, device)
                      for s in range(0, len(paths), batch_size)])


def market_split(folder: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(paths, identities, cameras)`` of one Market-1501 folder in file-name order, junk
    (-1) kept (the protocol ignores it; figures show it) (:func:`cion.data.readers.read_market_folder`)."""
    from cion.data.manifest import resolve_paths
    from cion.data.readers import read_market_folder

    df = read_market_folder(folder, keep_junk=True)
    return ([str(p) for p in resolve_paths(df)], df["identity"].to_numpy(),
            df["camera"].to_numpy())


def zero_shot_map(model: torch.nn.Module, market_root: str | Path, img_size=(256, 128),
                  batch_size: int = 128, device="cpu") -> dict[str, float]:
    """kNN retrieval of ``query/`` in ``bounding_box_test/``: ``{'mAP', 'rank1', 'mINP'}``."""
    root = Path(market_root)
    return retrieval_scores(model, market_split(root / "query"),
                            market_split(root / "bounding_box_test"), img_size, batch_size, device)


def retrieval_scores(model: torch.nn.Module, query, gallery, img_size=(256, 128),
                     batch_size: int = 128, device="cpu") -> dict[str, float]:
    """kNN retrieval (cosine) of ``query`` in ``gallery``, each a ``(paths, identities,
    cameras)`` triple: ``{'mAP', 'rank1', 'mINP'}`` (fractions)."""
    from cion.evaluation.rank import evaluate_rank

    (qp, qid, qcam), (gp, gid, gcam) = query, gallery
    qf = embed_paths(model, list(qp), img_size, batch_size, device)
    gf = embed_paths(model, list(gp), img_size, batch_size, device)
    dist = (1.0 - qf @ gf.T).double()
    r = evaluate_rank(dist, np.asarray(qid), np.asarray(gid), np.asarray(qcam), np.asarray(gcam),
                      max_rank=10)
    return {"mAP": float(r["mAP"]), "rank1": float(r["cmc"][0]), "mINP": float(r["mINP"])}
