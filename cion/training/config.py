"""Recipe fields shared by the pre-training and fine-tuning configurations."""
from __future__ import annotations

from cion.errors import CionError


def parse_size(v, name: str) -> tuple[int, int]:
    """An image size in a recipe, ``"256x128"`` or ``[256, 128]``, as (height, width); a one-line
    error naming the field ``name`` otherwise."""
    if isinstance(v, str):
        try:
            h, w = (int(x) for x in v.lower().split("x"))
        except ValueError:
            raise CionError(f"{name} must look like HEIGHTxWIDTH, e.g. 256x128 (got '{v}')") from None
        return h, w
    try:
        h, w = v
        return int(h), int(w)
    except (TypeError, ValueError):
        raise CionError(f"{name} must be [height, width], e.g. [256, 128] (got {v!r})") from None
