"""Moved to :mod:`cion.evaluation.retrieval`; this alias keeps old imports working until callers
are updated (``extract_features`` is now ``embed_paths``, ``read_market_split`` is
``market_split``)."""
from cion.evaluation.retrieval import (embed, embed_paths, image_tensor, market_split,  # noqa: F401
                                       retrieval_scores, zero_shot_map)

extract_features = embed_paths
read_market_split = market_split
