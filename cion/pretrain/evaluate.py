"""Zero-shot kNN evaluation of a (pre-trained) backbone on a Market-1501-layout benchmark.

Features of ``query/`` and ``bounding_box_test/`` (resize to the global view size, ImageNet
normalisation, L2-normalised backbone outputs), cosine distance, mAP / CMC by
:func:`cion.evaluation.evaluate_rank` (SPEC section 7 protocol). Used by
``benchmarks/pretrain_synth.py`` and reusable by the demo to compare pre-training methods.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cion.errors import CionError

_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def read_market_split(folder: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image paths, identities and cameras of one Market-1501 folder (names ``0002_c1s1_...``)."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.jpg"))
    if not files:
        raise CionError(f"{folder}: no .jpg images. Fix: point to a Market-1501 layout folder")
    pids, cams = [], []
    for p in files:
        m = _NAME.match(p.name)
        if m is None:
            raise CionError(f"{p}: name does not follow Market-1501's '0002_c1s1_000451_03.jpg'")
        pids.append(int(m.group(1)))
        cams.append(int(m.group(2)))
    return [str(p) for p in files], np.array(pids), np.array(cams)


def image_tensor(paths: list[str], img_size=(256, 128)) -> torch.Tensor:
    """(N, 3, H, W) float32 images resized to ``img_size`` (H, W), ImageNet-normalised."""
    h, w = img_size
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
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


def extract_features(model: torch.nn.Module, paths: list[str], img_size=(256, 128),
                     batch_size: int = 128, device="cpu") -> torch.Tensor:
    """(N, D) L2-normalised features of images resized to ``img_size`` (H, W)."""
    return torch.cat([embed(model, image_tensor(paths[s:s + batch_size], img_size), batch_size, device)
                      for s in range(0, len(paths), batch_size)])


def zero_shot_map(model: torch.nn.Module, market_root: str | Path, img_size=(256, 128),
                  batch_size: int = 128, device="cpu") -> dict[str, float]:
    """kNN retrieval of ``query/`` in ``bounding_box_test/``: ``{'mAP', 'rank1', 'mINP'}``."""
    root = Path(market_root)
    return retrieval_scores(model, read_market_split(root / "query"),
                            read_market_split(root / "bounding_box_test"), img_size, batch_size,
                            device)


def retrieval_scores(model: torch.nn.Module, query, gallery, img_size=(256, 128),
                     batch_size: int = 128, device="cpu") -> dict[str, float]:
    """kNN retrieval (cosine, SPEC section 7 protocol) of ``query`` in ``gallery``, each a
    ``(paths, identities, cameras)`` triple: ``{'mAP', 'rank1', 'mINP'}`` (fractions)."""
    from cion.evaluation import evaluate_rank

    (qp, qid, qcam), (gp, gid, gcam) = query, gallery
    qf = extract_features(model, list(qp), img_size, batch_size, device)
    gf = extract_features(model, list(gp), img_size, batch_size, device)
    dist = (1.0 - qf @ gf.T).double()
    r = evaluate_rank(dist, np.asarray(qid), np.asarray(gid), np.asarray(qcam), np.asarray(gcam),
                      max_rank=10)
    return {"mAP": float(r["mAP"]), "rank1": float(r["cmc"][0]), "mINP": float(r["mINP"])}
