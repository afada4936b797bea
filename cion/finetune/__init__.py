"""Supervised fine-tuning of a (pre-trained) backbone: the BNNeck baseline (SPEC section 6).

    from cion.finetune import SupervisedConfig, finetune_on_market
    result = finetune_on_market(backbone, "data/market1501", SupervisedConfig(steps=2000))
"""
from cion.finetune.bnneck import BNNeckModel
from cion.finetune.losses import batch_hard_triplet, pairwise_euclidean, smoothed_cross_entropy
from cion.finetune.sampler import PKSampler
from cion.finetune.supervised import (FinetuneResult, SupervisedConfig, finetune_on_market,
                                      finetune_supervised)
from cion.finetune.transforms import TrainAugment, decode_images, normalize

__all__ = ["BNNeckModel", "batch_hard_triplet", "pairwise_euclidean", "smoothed_cross_entropy",
           "PKSampler", "FinetuneResult", "SupervisedConfig", "finetune_on_market",
           "finetune_supervised", "TrainAugment", "decode_images", "normalize"]
