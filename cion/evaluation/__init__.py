"""Evaluation: rank metrics (mAP, mINP, CMC), k-reciprocal re-ranking, ranked-list / t-SNE figures.

>>> from cion.evaluation import evaluate_rank, evaluate_features, rerank_features
>>> r = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
>>> r["mAP"], r["mINP"], r["cmc"][0]              # rank-1 = cmc[0]
>>> r = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric="cosine")
>>> final = rerank_features(qf, gf, k1=20, k2=6, lambda_value=0.3)   # (Q, G), bounded memory
"""
from cion.evaluation.rank import (METRICS, EvaluationError, distance_chunks, evaluate_distance_chunks,
                                  evaluate_features, evaluate_rank, topk_gallery)
from cion.evaluation.rerank import re_ranking, rerank_features

__all__ = ["METRICS", "EvaluationError", "evaluate_rank", "evaluate_features",
           "evaluate_distance_chunks", "distance_chunks", "topk_gallery", "re_ranking",
           "rerank_features"]
