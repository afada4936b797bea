"""Identity-guided pre-training learns ReID features on the synthetic world: a few hundred CPU
steps of the demo recipe on the true identities beat random initialisation on zero-shot kNN mAP.

This guards the training signal end to end (sampler, augmentation, head, loss, EMA teacher,
schedules, initialisation): timm's zero-initialised residual branches, for one, kept every run
at random level while every other unit test passed."""
from __future__ import annotations

import torch

from cion.demo.plan import RECIPE
from cion.pretrain import PretrainConfig, pretrain

STEPS = 200


def test_true_identities_beat_random_init(tiny_world, tmp_path, one_torch_thread):
    from cion.data.manifest import read_manifest
    from cion.models.backbone import build_backbone, load_backbone
    from cion.evaluation.retrieval import zero_shot_map

    df = read_manifest(tiny_world / "pretrain" / "manifest.parquet")
    df["identity"] = df["true_identity"]                  # an oracle denoiser; -1 rows dropped
    cfg = PretrainConfig.from_yaml(RECIPE, epochs=8, max_steps=STEPS, tensorboard=False,
                                   curriculum=[[0, 2], [4, 4]], seed=0, log_every=5)
    torch.manual_seed(cfg.seed)
    before = zero_shot_map(build_backbone(cfg.arch, cfg.global_size), tiny_world / "market",
                           cfg.global_size)
    result = pretrain(df, cfg, tmp_path / "run", progress=False, log=lambda msg: None)
    assert result.steps == STEPS and not result.collapsed
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, "the loss must fall"
    after = zero_shot_map(load_backbone(cfg.arch, result.backbone, cfg.global_size),
                          tiny_world / "market", cfg.global_size)
    print(f"zero-shot mAP: random {before['mAP']:.3f} -> pre-trained {after['mAP']:.3f}")
    assert after["mAP"] > before["mAP"] + 0.03 and after["mAP"] > 1.5 * before["mAP"]
