"""Images for fine-tuning: a training dataset streamed through a DataLoader (or decoded once
into memory for small sets), and feature extraction of a whole split (sharded over DDP ranks).

Training items are the identity samplers' ``(row, aug_seed, label)`` triples
(:class:`cion.data.sampler.IdentityBatchSampler`, the cluster sampler): each image's flip,
pad + crop and random erasing (:class:`cion.finetune.transforms.TrainAugment`) depend only on
its own seed, so a resumed run draws exactly the crops of an uninterrupted one, for any number
of data-loader workers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cion import distributed as dist
from cion.errors import CionError
from cion.finetune.transforms import TrainAugment, decode_images, normalize


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB of ``path`` resized (bilinear) to ``size`` = (H, W)."""
    h, w = size
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (2 * w, 2 * h))       # decode large JPEGs at a reduced scale
            return np.array(img.convert("RGB").resize((w, h), Image.BILINEAR))
    except (OSError, ValueError) as err:
        raise CionError(f"{path}: cannot read this image ({err}). Fix: remove it from the "
                        "dataset or replace the file") from None


class TrainImages(torch.utils.data.Dataset):
    """``dataset[(row, seed, label)] -> (image (3, H, W) float32, label, row)``, augmented.

    Args:
        paths: (N,) image files.
        size: (H, W).
        augment: the training augmentation.
        images: optional (N, H, W, 3) uint8 array already decoded (``in_memory``); shared
            copy-on-write with forked workers.
    """

    def __init__(self, paths: list[str], size: tuple[int, int], augment: TrainAugment,
                 images: np.ndarray | None = None):
        self.paths, self.size, self.augment, self.images = list(paths), tuple(size), augment, images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        row, seed, label = item
        img = self.images[row] if self.images is not None else load_image(self.paths[row], self.size)
        x = self.augment(img[None], np.random.default_rng(int(seed)))[0]
        return x, int(label), int(row)


class TestImages(torch.utils.data.Dataset):
    """``dataset[i] -> image (3, H, W)``: resized and ImageNet-normalised, no augmentation."""

    def __init__(self, paths: list[str], size: tuple[int, int], images: np.ndarray | None = None):
        self.paths, self.size, self.images = list(paths), tuple(size), images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        img = self.images[i] if self.images is not None else load_image(self.paths[i], self.size)
        return normalize(img[None])[0]


def _worker_init(_):
    torch.set_num_threads(1)


def loader(dataset, *, batch_sampler=None, batch_size=None, workers: int = 0,
           device: torch.device = torch.device("cpu")) -> torch.utils.data.DataLoader:
    """A DataLoader that leaves the global RNG untouched (its own generator) and gives each
    worker one torch thread."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
        generator=torch.Generator())


@torch.no_grad()
def extract(model: torch.nn.Module, paths: list[str], size: tuple[int, int], *,
            device: torch.device, batch_size: int = 128, workers: int = 0,
            images: np.ndarray | None = None, autocast=None, shard: bool = False,
            channels_last: bool = False) -> torch.Tensor:
    """(N, D) float32 L2-normalised features of ``paths`` (``model`` in eval mode, no flip).

    ``shard``: under DDP each rank extracts ``np.array_split`` part ``rank`` of the rows and
    the parts are all-gathered, so every rank returns the same (N, D) tensor (on the CPU).
    """
    rows = np.arange(len(paths))
    w = dist.world_size() if shard else 1
    mine = np.array_split(rows, w)[dist.rank()] if w > 1 else rows
    sub_images = images[mine] if images is not None else None
    data = TestImages([paths[i] for i in mine], size, sub_images)
    was = model.training
    model.eval()
    feats = []
    try:
        for x in loader(data, batch_size=batch_size, workers=workers, device=device):
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast if autocast is not None else _null():
                f = model(x)
            feats.append(F.normalize(f.float(), dim=1).cpu())
    finally:
        model.train(was)
    out = torch.cat(feats) if feats else torch.zeros(0, 1)
    if w == 1:
        return out
    # pad every rank's part to the largest, gather, cut the padding
    sizes = [len(p) for p in np.array_split(rows, w)]
    pad = torch.zeros(max(sizes), out.shape[1])
    pad[:len(out)] = out
    if dist.is_dist():
        target = pad.to(device)
        parts = [torch.empty_like(target) for _ in range(w)]
        torch.distributed.all_gather(parts, target)
        return torch.cat([p[:n].cpu() for p, n in zip(parts, sizes)])
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def preload(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 of all images (``in_memory``: N x H x W x 3 bytes)."""
    return decode_images(paths, size)
