"""Images for fine-tuning: a training dataset streamed through a DataLoader (or decoded once
into memory for small sets), and feature extraction of a whole split (sharded over DDP ranks).

Training items are the identity samplers' ``(row, aug_seed, label)`` triples
(:class:`cion.data.sampler.IdentityBatchSampler`, the cluster sampler): each image's flip,
pad + crop and random erasing (:class:`cion.finetune.transforms.TrainAugment`) depend only on
its own seed, so a resumed run draws exactly the crops of an uninterrupted one, for any number
of data-loader workers.

Unreadable images (corrupt, truncated, empty or missing; :mod:`cion.data.images`): reading
raises :class:`~cion.data.images.BadImageError`, which the trainer turns into a replacement
(supervised / MGN, :class:`~cion.data.images.ReplaceBadImages`) or an outlier of the epoch
(Cluster Contrast: :func:`extract` reports the rows instead of stopping).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cion import distributed as dist
from cion.data.images import BadImageError, read_rgb
from cion.finetune.transforms import TrainAugment, normalize


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB of ``path`` resized (bilinear) to ``size`` = (H, W); a large JPEG
    is decoded at a reduced scale (never below twice ``size``).

    Raises:
        BadImageError: the file is missing, empty, corrupt or truncated.
    """
    h, w = size
    img = read_rgb(path, draft=(2 * w, 2 * h))
    return np.array(img.resize((w, h), Image.BILINEAR))


def _decoded(images: np.ndarray, errors: dict[int, str] | None, paths: list[str], row: int):
    """Row ``row`` of an in-memory set; a row that could not be decoded raises again."""
    if errors and row in errors:
        raise BadImageError(paths[row], errors[row])
    return images[row]


class TrainImages(torch.utils.data.Dataset):
    """``dataset[(row, seed, label)] -> (image (3, H, W) float32, label, row)``, augmented.

    Args:
        paths: (N,) image files.
        size: (H, W).
        augment: the training augmentation.
        images: optional (N, H, W, 3) uint8 array already decoded (``in_memory``); shared
            copy-on-write with forked workers.
        image_errors: {row: reason} of the rows of ``images`` that could not be decoded
            (:func:`preload`); reading them raises :class:`BadImageError` as a file would.
    """

    def __init__(self, paths: list[str], size: tuple[int, int], augment: TrainAugment,
                 images: np.ndarray | None = None, image_errors: dict[int, str] | None = None):
        self.paths, self.size, self.augment, self.images = list(paths), tuple(size), augment, images
        self.image_errors = dict(image_errors or {})

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        row, seed, label = item
        img = (_decoded(self.images, self.image_errors, self.paths, row) if self.images is not None
               else load_image(self.paths[row], self.size))
        x = self.augment(img[None], np.random.default_rng(int(seed)))[0]
        return x, int(label), int(row)


class TestImages(torch.utils.data.Dataset):
    """``dataset[i] -> (image (3, H, W), reason)``: resized and ImageNet-normalised, no
    augmentation. ``reason`` is ``""`` for a readable image; an unreadable one gives a zero
    image and why it cannot be read (the caller decides: outlier, or stop), so a bad file never
    raises inside a DataLoader worker."""

    def __init__(self, paths: list[str], size: tuple[int, int], images: np.ndarray | None = None,
                 image_errors: dict[int, str] | None = None):
        self.paths, self.size, self.images = list(paths), tuple(size), images
        self.image_errors = dict(image_errors or {})

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = (_decoded(self.images, self.image_errors, self.paths, i)
                   if self.images is not None else load_image(self.paths[i], self.size))
        except BadImageError as err:
            h, w = self.size
            return torch.zeros(3, h, w), err.reason or "unreadable"
        return normalize(img[None])[0], ""


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
            images: np.ndarray | None = None, image_errors: dict[int, str] | None = None,
            autocast=None, shard: bool = False, channels_last: bool = False,
            bad: dict[int, str] | None = None) -> torch.Tensor:
    """(N, D) float32 L2-normalised features of ``paths`` (``model`` in eval mode, no flip).

    ``shard``: under DDP each rank extracts ``np.array_split`` part ``rank`` of the rows and
    the parts are all-gathered, so every rank returns the same (N, D) tensor (on the CPU).

    Unreadable images: with a ``bad`` dict, their rows are added to it (``{row: reason}``, the
    same on every rank) and their features are zeros; without, the first one stops the run
    (:class:`BadImageError`, one line). ``images`` / ``image_errors``: :func:`preload`'s output.
    """
    rows = np.arange(len(paths))
    w = dist.world_size() if shard else 1
    mine = np.array_split(rows, w)[dist.rank()] if w > 1 else rows
    sub_images = images[mine] if images is not None else None
    sub_errors = ({j: image_errors[int(r)] for j, r in enumerate(mine) if int(r) in image_errors}
                  if image_errors else None)
    data = TestImages([paths[i] for i in mine], size, sub_images, sub_errors)
    was = model.training
    model.eval()
    feats, found, seen = [], {}, 0
    try:
        for x, reasons in loader(data, batch_size=batch_size, workers=workers, device=device):
            for j, why in enumerate(reasons):
                if why:
                    found[int(mine[seen + j])] = why
            seen += len(reasons)
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast if autocast is not None else _null():
                f = model(x)
            feats.append(F.normalize(f.float(), dim=1).cpu())
    finally:
        model.train(was)
    out = torch.cat(feats) if feats else torch.zeros(0, 1)
    if shard and dist.is_dist() and w > 1:
        found = {r: why for part in dist.all_gather_object(found) for r, why in part.items()}
    if found:
        if bad is None:
            first = min(found)
            raise BadImageError(paths[first], found[first])
        bad.update(found)
    if w == 1:
        return _zero_rows(out, found)
    # pad every rank's part to the largest, gather, cut the padding
    sizes = [len(p) for p in np.array_split(rows, w)]
    width = out.shape[1]
    if dist.is_dist():          # a rank with no rows does not know the feature width
        width = max(dist.all_gather_object(width if len(out) else 0))
    pad = torch.zeros(max(sizes), width)
    pad[:len(out)] = out
    if dist.is_dist():
        target = pad.to(device)
        parts = [torch.empty_like(target) for _ in range(w)]
        torch.distributed.all_gather(parts, target)
        return _zero_rows(torch.cat([p[:n].cpu() for p, n in zip(parts, sizes)]), found)
    return _zero_rows(out, found)


def _zero_rows(feats: torch.Tensor, rows: dict[int, str]) -> torch.Tensor:
    if rows:
        feats[torch.as_tensor(sorted(rows), dtype=torch.long)] = 0
    return feats


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def preload(paths: list[str], size: tuple[int, int]) -> tuple[np.ndarray, dict[int, str]]:
    """``(images, errors)``: (N, H, W, 3) uint8 of all images (``in_memory``: N x H x W x 3
    bytes; decoded as :func:`load_image` does) and ``{row: reason}`` of the rows that cannot be
    read (left black; :class:`TrainImages` / :class:`TestImages` treat them as bad files)."""
    h, w = size
    images = np.zeros((len(paths), h, w, 3), np.uint8)
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):          # decoding is per file by nature
        try:
            images[i] = load_image(path, size)
        except BadImageError as err:
            errors[i] = err.reason or "unreadable"
    return images, errors
