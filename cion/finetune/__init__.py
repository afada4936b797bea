"""Fine-tuning as the paper ran it (Sec. 4.1): supervised BNNeck, MGN, and Cluster Contrast for
unsupervised (USL) and domain-adaptive (UDA) ReID, on one resumable, DDP, mixed-precision trainer.
docs/finetuning.md has the four modes, one command each, and the recipes (configs/finetune/).

    from cion.finetune import FinetuneConfig, finetune
    cfg = FinetuneConfig.load("configs/finetune/usl_market1501.yaml", arch="resnet50_ibn")
    report = finetune(cfg, "data/market1501", "runs/usl", checkpoint="backbone.safetensors")

The short in-memory supervised loop (:func:`finetune_supervised`, :func:`finetune_on_market`)
stays for quick experiments on small sets (the demo uses it).
"""
from cion.finetune.bnneck import BNNeckModel
from cion.finetune.config import MODES, FinetuneConfig
from cion.finetune.losses import batch_hard_triplet, pairwise_euclidean, smoothed_cross_entropy
from cion.finetune.sampler import PKSampler
from cion.finetune.supervised import (FinetuneResult, SupervisedConfig, finetune_on_market,
                                      finetune_supervised)
from cion.finetune.trainer import finetune
from cion.finetune.transforms import TrainAugment, decode_images, normalize

__all__ = ["BNNeckModel", "batch_hard_triplet", "pairwise_euclidean", "smoothed_cross_entropy",
           "PKSampler", "FinetuneResult", "SupervisedConfig", "finetune_on_market",
           "finetune_supervised", "TrainAugment", "decode_images", "normalize", "FinetuneConfig",
           "MODES", "finetune"]
