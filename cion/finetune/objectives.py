"""What each fine-tuning mode trains and how its loss is computed, behind one small interface
the trainer drives (:class:`Objective`):

* :class:`SupervisedObjective`: BNNeck (paper Sec. 4.1, TransReID-style): label-smoothed ID loss
  on the logits after the BN neck + batch-hard triplet on the features before it; under DDP the
  triplet mines over the global batch (all ranks' features, gradients kept);
* :class:`MGNObjective`: Multiple Granularity Network (:mod:`cion.finetune.mgn`), its 8 ID and
  5 triplet terms; backbone and branches frozen for the first ``freeze_epochs`` epochs;
* :class:`ClusterObjective`: Cluster Contrast (USL / UDA): every epoch the train set is
  re-clustered (:mod:`cion.finetune.recluster`) and the loss is the contrast of each feature
  with the cluster memory, updated after every step with the all-gathered batch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cion import distributed as dist
from cion.finetune.bnneck import BNNeckModel
from cion.finetune.config import FinetuneConfig
from cion.finetune.losses import batch_hard_triplet, smoothed_cross_entropy
from cion.training.collectives import all_gather_rows, gather_rows_with_grad


class Objective:
    """``model``: the trained network (its ``backbone`` attribute is the backbone);
    ``loss(net, x, y) -> (loss, {name: 0-d tensor})`` with ``net`` the (DDP-wrapped) model;
    ``after_step`` runs after the optimiser step; ``test_model()`` maps images to the mode's
    test feature in eval mode; ``state_dict`` holds what exact resume needs beyond the model."""

    model: nn.Module
    terms: tuple[str, ...] = ("loss",)

    def start_epoch(self, epoch: int, resumed: bool) -> None:
        pass

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor):
        raise NotImplementedError

    def after_step(self) -> None:
        pass

    def before_optimizer_step(self, epoch: int) -> None:
        pass

    def test_model(self) -> nn.Module:
        return self.model

    def backbone(self) -> nn.Module | None:
        """The backbone alone (exported as ``backbone.safetensors``), or None (MGN)."""
        return self.model.backbone

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SupervisedObjective(Objective):
    terms = ("loss", "id", "triplet")

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: FinetuneConfig):
        self.model = BNNeckModel(backbone, num_classes)
        self.cfg = cfg

    def loss(self, net, x, y):
        cfg = self.cfg
        features, logits = net(x)
        ce = smoothed_cross_entropy(logits.float(), y, cfg.label_smoothing)
        f_all, y_all = gather_rows_with_grad(features.float()), all_gather_rows(y)
        tri = batch_hard_triplet(f_all, y_all, cfg.margin, cfg.soft_margin)
        total = cfg.id_weight * ce + cfg.triplet_weight * tri
        return total, {"loss": total.detach(), "id": ce.detach(), "triplet": tri.detach()}


class MGNObjective(Objective):
    """MGN: the network and its loss come from :mod:`cion.finetune.mgn`; the shared part and
    the branches are frozen (no gradient, eval mode) during the first ``freeze_epochs``."""

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: FinetuneConfig):
        from cion.finetune import mgn

        self._mgn = mgn
        self.model = mgn.MGN(backbone, num_classes, classifier=cfg.mgn_classifier)
        self.cfg = cfg

    def start_epoch(self, epoch: int, resumed: bool) -> None:
        self._mgn.freeze_mgn_backbone(self.model, epoch < self.cfg.freeze_epochs)

    def loss(self, net, x, y):
        outputs = net(x, y)
        total, terms = self._mgn.mgn_loss(outputs, y, smoothing=self.cfg.label_smoothing)
        ce = sum(v for k, v in terms.items() if k.startswith("ce_")) / len(self._mgn.HEADS)
        tri = sum(v for k, v in terms.items() if k.startswith("triplet_")) / len(
            self._mgn.TRIPLET_GROUPS)
        return total, {"loss": total.detach(), "id": ce.detach(), "triplet": tri.detach()}

    def backbone(self):
        return None


class ClusterObjective(Objective):
    terms = ("loss",)

    def __init__(self, backbone: nn.Module, cfg: FinetuneConfig, img_size):
        from cion.finetune.cluster import ClusterMemory
        from cion.finetune.cluster_model import ClusterModel

        self.model = ClusterModel(backbone, img_size)
        self.memory = ClusterMemory(self.model.feature_dim, 0, cfg.temperature,
                                    cfg.memory_momentum, cfg.memory_update)
        self.cfg = cfg
        self.labels: np.ndarray | None = None   # this epoch's pseudo-labels (N,), -1 outliers
        self._batch = None

    def to(self, device):
        self.memory.to(device)
        return self

    def loss(self, net, x, y):
        f = net(x)
        loss = self.memory(f.float(), y)
        self._batch = (f.detach().float(), y)
        return loss, {"loss": loss.detach()}

    def after_step(self) -> None:
        f, y = self._batch
        self.memory.update(all_gather_rows(f), all_gather_rows(y))
        self._batch = None

    def state_dict(self) -> dict:
        return {"labels": torch.from_numpy(self.labels) if self.labels is not None else None,
                "memory": {k: v.detach().cpu() for k, v in self.memory.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("labels") is not None:
            self.labels = state["labels"].numpy().astype(np.int64)
            self.memory.load_state_dict(state["memory"])


def build_objective(cfg: FinetuneConfig, backbone: nn.Module, num_classes: int) -> Objective:
    if cfg.mode == "supervised":
        return SupervisedObjective(backbone, num_classes, cfg)
    if cfg.mode == "mgn":
        return MGNObjective(backbone, num_classes, cfg)
    return ClusterObjective(backbone, cfg, cfg.img_size)


def reduce_stats(stats: dict, steps: int) -> dict[str, float]:
    """Mean over the accumulated steps and over ranks, as floats (one synchronisation)."""
    names = sorted(stats)
    vec = torch.stack([stats[k].float() for k in names]) / max(steps, 1)
    vec = dist.all_reduce_sum(vec) / dist.world_size()
    return dict(zip(names, vec.tolist()))
