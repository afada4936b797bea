"""One pre-training run of the demo, self-contained so it can run in a worker process.

:func:`pretrain_and_evaluate` trains the demo backbone on one identity labelling for a fixed
number of steps (method ``random``: no training, the initialisation the others start from), then
measures zero-shot kNN retrieval of its teacher backbone on the world's benchmark and, when the
job asks for it, retrieval after a short supervised fine-tune on the benchmark's train split. It
returns plain data (numbers and paths), so a process pool can carry it back.
"""
from __future__ import annotations

import time


def curriculum_for(fractions, epochs: int) -> list[list[int]]:
    """(fraction of training, K) pairs -> the trainer's (epoch, K) pairs for ``epochs``."""
    curriculum = {0: int(fractions[0][1])}
    for frac, k in fractions[1:]:
        curriculum[max(1, int(round(float(frac) * epochs)))] = int(k)
    return [[e, k] for e, k in sorted(curriculum.items())]


def epochs_for_budget(labels, batch_size: int, fractions, steps: int) -> tuple[int, list]:
    """The fewest epochs whose sampler steps (K changes the steps per epoch) reach ``steps``,
    and the curriculum for them: the schedules then span the budget."""
    from cion.data.sampler import IdentityBatchSampler

    epochs = 1
    while True:
        curriculum = curriculum_for(fractions, epochs)
        sampler = IdentityBatchSampler(labels, batch_size, curriculum, 0)
        if sum(sampler.steps_in_epoch(e) for e in range(epochs)) >= steps:
            return epochs, curriculum
        epochs += 1


def pretrain_and_evaluate(job: dict) -> dict:
    """Run one job; ``job`` keys: ``method``, ``seed``, ``manifest`` (parquet with ``identity``),
    ``config`` (PretrainConfig fields), ``steps``, ``run_dir``, ``market`` (benchmark root),
    ``threads``, ``log_every``, ``curriculum`` ((fraction of the budget, K) pairs),
    ``finetune_steps`` (0: no fine-tune). Method ``random`` only needs ``method``, ``seed``,
    ``config``, ``market``.

    Returns ``{"method", "seed", "mAP", "rank1", "mINP", "seconds", "backbone", "losses",
    "steps"}`` (``losses``: (step, loss, teacher entropy) triples; ``backbone`` None for
    ``random``), for trained runs also ``"manifest"`` and ``"identities"`` (the labelling trained
    on and its number of identities), plus ``"finetuned": {"mAP", "rank1", "mINP", "seconds"}`` when fine-tuned."""
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(int(job.get("threads", 1)))
    from cion.pretrain import PretrainConfig, pretrain
    from cion.models.backbone import load_backbone
    from cion.evaluation.retrieval import zero_shot_map

    method, seed = job["method"], int(job["seed"])
    if method == "random":
        from cion.models.backbone import build_backbone

        cfg = job["config"]
        size = tuple(cfg["global_size"])
        torch.manual_seed(seed)       # the initialisation the trained runs start from
        model = build_backbone(cfg["arch"], size)
        out = {"method": method, "seed": seed, **zero_shot_map(model, job["market"], size),
               "seconds": 0.0, "backbone": None, "steps": 0, "epochs": 0, "losses": []}
        return _usl(_finetune(out, model, job, size), None, job, size)
    steps = int(job["steps"])
    df = pd.read_parquet(job["manifest"])
    df.attrs["root"] = job["root"]
    cfg = dict(job["config"], seed=seed, max_steps=steps, tensorboard=False, num_workers=0)
    fractions = [[0.0, 1]] if method == "instance" else job["curriculum"]
    labels = df["identity"].to_numpy(np.int64)
    labels = labels[labels >= 0]
    cfg["epochs"], cfg["curriculum"] = epochs_for_budget(labels, int(cfg["batch_size"]), fractions,
                                                         steps)
    config = PretrainConfig.from_dict(cfg, "demo recipe")
    every = max(1, steps // int(job.get("log_every", 4)))
    tag = f"{method} (seed {seed})"

    def report(record: dict) -> None:
        if record["step"] % every == 0 and record["step"] < steps:
            print(f"[demo]   {tag}: step {record['step']}/{steps}, loss {record['loss']:.3f}",
                  flush=True)

    t0 = time.perf_counter()
    result = pretrain(df, config, job["run_dir"], progress=False, callbacks=[report],
                      log=lambda msg: None)
    seconds = time.perf_counter() - t0
    model = load_backbone(config.arch, result.backbone, config.global_size)
    scores = zero_shot_map(model, job["market"], config.global_size)
    out = {"method": method, "seed": seed, **scores, "seconds": seconds,
           "backbone": str(result.backbone), "steps": result.steps, "epochs": config.epochs,
           "manifest": job["manifest"], "identities": int(np.unique(labels).size),
           "losses": [(h["step"], h["loss"], h["teacher_entropy"]) for h in result.history]}
    return _usl(_finetune(out, model, job, config.global_size), result.backbone, job,
                config.global_size)


#: Cluster Contrast at the demo world's scale (a few hundred training images of 15-50 people):
#: k1 10 instead of 30, a constant rate of 3e-3 (the 0.2M-parameter backbone barely moves at
#: 3.5e-4 in a few dozen steps), batches of 8 clusters x 4 images
USL_RECIPE = dict(mode="usl", batch_size=32, instances=4, optimizer="adam", lr=3e-3,
                  schedule="step", step_size=1000, warmup_epochs=0, k1=10, eps=0.6,
                  eval_every=0, tensorboard=False, device="cpu", num_workers=0)


def _usl(out: dict, backbone, job: dict, size) -> dict:
    """Add ``out["usl"]``: retrieval after Cluster Contrast (USL) on the benchmark's train split
    without its labels, ``job["usl_epochs"]`` re-clusterings of ``job["usl_iters"]`` steps
    each, from the run's backbone (``backbone`` path; None: the seeded random init)."""
    epochs = int(job.get("usl_epochs", 0))
    if epochs <= 0 or out["method"] not in job.get("usl_methods", ()):
        return out
    from pathlib import Path

    from cion.finetune import FinetuneConfig, finetune

    arch = job["config"]["arch"]
    cfg = FinetuneConfig(**USL_RECIPE, arch=arch, img_size=list(size), epochs=epochs,
                         iters_per_epoch=int(job["usl_iters"]), seed=out["seed"])
    run_dir = Path(job.get("run_dir") or job["market"]).parent / f"usl_{out['method']}_seed{out['seed']}"
    t0 = time.perf_counter()
    report = finetune(cfg, job["market"], run_dir, checkpoint=backbone, progress=False,
                      log=lambda msg: None, evaluate_start=False)
    end = report["scores"]["end"]
    out["usl"] = {"mAP": end["mAP"], "rank1": end["rank1"], "mINP": end["mINP"],
                  "seconds": time.perf_counter() - t0,
                  "clusters": [c["clusters"] for c in report["clusters"]]}
    return out


def _finetune(out: dict, model, job: dict, size) -> dict:
    """Add ``out["finetuned"]``: retrieval after ``job["finetune_steps"]`` steps of the
    supervised BNNeck recipe on the benchmark's ``bounding_box_train`` (same seed for every
    method, so the runs differ only in their starting weights)."""
    steps = int(job.get("finetune_steps", 0))
    if steps <= 0:
        return out
    import torch

    from cion.finetune import SupervisedConfig, finetune_on_market
    from cion.evaluation.retrieval import zero_shot_map

    torch.manual_seed(out["seed"])
    # lr 3e-3, not the strong baseline's 3.5e-4: the 0.2M-parameter demo backbone barely moves
    # at 3.5e-4 in a few hundred steps (tiny world, 150 steps: mAP 0.14 against 0.28)
    cfg = SupervisedConfig(steps=steps, lr=3e-3, warmup_steps=min(50, steps // 5),
                           image_size=tuple(size), seed=out["seed"], log_every=steps)
    t0 = time.perf_counter()
    tuned = finetune_on_market(model, job["market"], cfg, log=lambda msg: None).model
    seconds = time.perf_counter() - t0
    out["finetuned"] = {**zero_shot_map(tuned, job["market"], tuple(size)), "seconds": seconds}
    return out
