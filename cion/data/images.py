"""Reading images on a crawl: one unreadable file never kills a run, too many stop it cleanly.

A file that is corrupt, truncated, empty or missing raises :class:`BadImageError` in
:func:`read_rgb`. What a command then does with it:

* training (``cion pretrain``; the same pieces serve fine-tuning): :class:`ReplaceBadImages`
  wraps a dataset indexed by ``(row, aug_seed, label)`` and, for an unreadable row, returns
  another image of the same identity, picked from ``(seed, row)`` alone, so the batch keeps its
  shape and a resumed run draws exactly what the uninterrupted one drew;
* extraction (``cion extract``): the row is skipped (dropped from the features and the manifest
  written beside them);
* evaluation (``cion evaluate``): the files are named and the run stops, unless
  ``--skip-bad-images`` (a silently missing query would change the metrics).

Every bad file is counted once and listed, one ``path<TAB>reason`` line each, in
``bad_images.txt`` (for extraction ``F.bad_images.txt``); a run stops with one line when more
than ``max_share`` (default 1%) of its images are bad (:class:`BadImageTally`). The list is
shared by all DataLoader workers and DDP ranks of a run through the file itself (appends under
an exclusive ``flock``), so the count is global and survives a resume.

>>> img = read_rgb("a.jpg")                                   # RGB, fully decoded
>>> ds = ReplaceBadImages(MultiCropDataset(paths, augment), labels, seed=0,
...                       list_path=out / "bad_images.txt")   # a drop-in dataset
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cion.errors import CionError

#: default largest share of unreadable images a run tolerates (skips and lists) before it stops
MAX_BAD_SHARE = 0.01


class BadImageError(CionError):
    """One image file cannot be read (corrupt, truncated, empty or missing)."""

    def __init__(self, path, reason: str = ""):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot read image ({reason}). Fix: remove the row from the "
                         "manifest or replace the file")


class TooManyBadImages(CionError):
    """More than the allowed share of a run's images are unreadable: the run stops.

    Raised inside a DataLoader worker, PyTorch re-raises it in the main process with the
    worker's traceback folded into the message; the constructor keeps only our one line.
    """

    MARK = "bad images: "

    def __init__(self, message: str):
        if "\n" in message:                          # re-raised by a DataLoader worker
            ours = [ln for ln in message.splitlines() if self.MARK in ln]
            if ours:
                message = ours[-1][ours[-1].index(self.MARK):]
        super().__init__(message)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.replace("\t", " ")[:200]


def read_rgb(path, draft: tuple[int, int] | None = None):
    """Open and fully decode ``path`` as an RGB ``PIL.Image``.

    Args:
        path: image file.
        draft: optional (width, height): a JPEG much larger than this is decoded at 1/2..1/8
            scale (``Image.draft``), never smaller than it.

    Raises:
        BadImageError: missing, empty, corrupt or truncated file (the decode is forced here, so
            a truncated JPEG fails now, not later inside an augmentation).
    """
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "empty file")
        with Image.open(path) as img:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", tuple(int(v) for v in draft))
            out = img.convert("RGB")                 # decodes every pixel
        return out
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "missing file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(path, _reason(err)) from None


class BadImageTally:
    """The unreadable images of one run: counted once each, listed in a file, and a stop rule.

    Args:
        total: images the run reads (the share's denominator).
        list_path: where the list goes (``path<TAB>reason`` lines); None keeps it in memory.
        max_share: the run stops when more than this share of ``total`` is bad.
        what: the command, for messages (``pretrain``, ``extract``).
        option: the option that sets ``max_share``, named in the stop message.
        fresh: start a new list (delete an old one); False continues it (a resumed run).
    """

    def __init__(self, total: int, list_path=None, *, max_share: float = MAX_BAD_SHARE,
                 what: str = "run", option: str = "--max-bad-share", fresh: bool = True):
        if not 0.0 <= float(max_share) <= 1.0:
            raise CionError(f"{option} {max_share}: give a share between 0 and 1 (0.01 = 1%)")
        self.total, self.max_share, self.what, self.option = int(total), float(max_share), what, option
        self.list_path = Path(list_path) if list_path is not None else None
        self._seen: dict[str, str] = {}
        self.rows: dict[int, str] = {}               # {row: reason}, filled by extraction
        if self.list_path is not None and fresh and self.list_path.exists():
            self.list_path.unlink()

    # -- the list ---------------------------------------------------------------------------
    def add(self, path, reason: str) -> int:
        """Record one bad file (again: no effect); returns the number of distinct bad files."""
        path = str(path)
        if self.list_path is None:
            self._seen.setdefault(path, reason)
            return len(self._seen)
        import fcntl

        self.list_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.list_path, "a+") as fh:        # shared by workers / ranks: lock, read, append
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            known = {ln.split("\t", 1)[0] for ln in fh.read().splitlines() if "\t" in ln}
            if path not in known:
                fh.write(f"{path}\t{reason}\n")
                fh.flush()
                known.add(path)
        return len(known)

    def entries(self) -> dict[str, str]:
        """{path: reason} of every bad file recorded so far (by any process of the run)."""
        if self.list_path is None:
            return dict(self._seen)
        if not self.list_path.exists():
            return {}
        out = {}
        for ln in self.list_path.read_text().splitlines():
            if "\t" in ln:
                p, r = ln.split("\t", 1)
                out.setdefault(p, r)
        return out

    @property
    def count(self) -> int:
        return len(self.entries())

    def write(self) -> Path | None:
        """Write the in-memory list to ``list_path`` atomically (sorted); None when empty."""
        if self.list_path is None or not self._seen:
            return None
        from cion.fileio import atomic_write

        text = "".join(f"{p}\t{r}\n" for p, r in sorted(self._seen.items()))
        return atomic_write(self.list_path, lambda tmp: Path(tmp).write_text(text))

    # -- the stop rule ----------------------------------------------------------------------
    def too_many(self, count: int) -> bool:
        return count > self.max_share * self.total

    def stop_message(self, count: int) -> str:
        where = self.list_path if self.list_path is not None else "the list above"
        return (f"{TooManyBadImages.MARK}{self.what} stopped: {count} of {self.total} images "
                f"({100.0 * count / max(self.total, 1):.1f}%) cannot be read (corrupt, truncated, "
                f"empty or missing), more than the allowed {100.0 * self.max_share:g}% "
                f"({self.option}); they are listed in {where}. Fix: repair or remove them from "
                f"the manifest, or raise {self.option}")

    def check(self, count: int | None = None) -> None:
        """Raise :class:`TooManyBadImages` (one line) when the share is exceeded."""
        count = self.count if count is None else count
        if self.too_many(count):
            self.write()
            raise TooManyBadImages(self.stop_message(count))


class ReplaceBadImages:
    """Dataset wrapper: an unreadable row is replaced by another image of the same identity.

    ``dataset[(row, aug_seed, label)]`` of the wrapped dataset must raise
    :class:`BadImageError` for an unreadable row (e.g. by reading with :func:`read_rgb`). The
    replacements of ``row`` are tried in an order drawn from ``(seed, row)`` only (the other
    images of its identity, then - for an identity with no other readable image - other images
    of the manifest), with the same augmentation seed and label: the batch keeps its shape and
    its labels, and the sequence of batches does not depend on which worker met the file first,
    so an interrupted run resumes exactly. Each bad file is added to ``tally`` (which stops the
    run past its share).

    Args:
        dataset: map-style dataset indexed by ``(row, aug_seed, label)`` tuples.
        labels: (N,) identity of each row (-1: not used by training).
        seed: the sampler's seed.
        tally: :class:`BadImageTally` of the run; paths: (N,) file of each row, for the list.
    """

    def __init__(self, dataset, labels, seed: int, tally: BadImageTally, paths=None):
        self.dataset = dataset
        self.seed = int(seed)
        self.tally = tally
        self.paths = list(paths) if paths is not None else list(getattr(dataset, "paths"))
        labels = np.asarray(labels, dtype=np.int64)
        self._usable = np.flatnonzero(labels >= 0)
        order = np.argsort(labels, kind="stable")
        self._rows = order                           # rows grouped by identity, rows ascending
        self._labels = labels
        self._start = np.searchsorted(labels[order], labels[order], side="left")
        self._stop = np.searchsorted(labels[order], labels[order], side="right")
        self._pos = np.empty(len(labels), dtype=np.int64)
        self._pos[order] = np.arange(len(labels))

    def __len__(self) -> int:
        return len(self.dataset)

    def candidates(self, row: int, extra: int = 16) -> np.ndarray:
        """``row``, then its replacements in the order they are tried (a function of
        ``(seed, row)``): the identity's other rows shuffled, then ``extra`` random usable rows."""
        rng = np.random.default_rng([self.seed, int(row), 0xBAD])
        k = self._pos[row]
        same = self._rows[self._start[k]:self._stop[k]]
        same = rng.permutation(same[same != row])
        other = self._usable[rng.integers(0, len(self._usable), extra)] if len(self._usable) else []
        return np.concatenate([[row], same, other]).astype(np.int64)

    def __getitem__(self, item):
        row, aug_seed, label = item
        tried = 0
        for cand in self.candidates(int(row)):
            try:
                return self.dataset[(int(cand), aug_seed, label)]
            except BadImageError as err:
                tried += 1
                self.tally.check(self.tally.add(self.paths[cand], err.reason))
        raise TooManyBadImages(f"{TooManyBadImages.MARK}identity {label}: none of the {tried} "
                               f"images tried in place of {self.paths[row]} can be read. Fix: "
                               "repair the images or remove them from the manifest")
