"""Evaluation: rank metrics (mAP, mINP, CMC), k-reciprocal re-ranking, ranked-list / t-SNE figures.

>>> from cion.evaluation import evaluate_rank, evaluate_features
>>> r = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
>>> r["mAP"], r["mINP"], r["cmc"][0]   # rank-1 = cmc[0]
"""
from cion.evaluation.rank import (METRICS, EvaluationError, evaluate_distance_chunks,
                                  evaluate_features, evaluate_rank, topk_gallery)

__all__ = ["METRICS", "EvaluationError", "evaluate_rank", "evaluate_features",
           "evaluate_distance_chunks", "topk_gallery"]
