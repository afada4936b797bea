"""Identity-guided self-distillation pre-training (CION, paper Sec. 3.3, Eq. 8-9).

    from cion.pretrain import PretrainConfig, pretrain
    result = pretrain(manifest_or_df, PretrainConfig(arch="resnet18", epochs=10), "runs/r18")
"""
from cion.pretrain.config import PretrainConfig
from cion.pretrain.loss import IdentityDINOLoss, identity_dino_loss_sum
from cion.pretrain.trainer import PretrainResult, pretrain

__all__ = ["PretrainConfig", "PretrainResult", "pretrain", "IdentityDINOLoss",
           "identity_dino_loss_sum"]
