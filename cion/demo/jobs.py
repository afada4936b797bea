"""One pre-training run of the demo, self-contained so it can run in a worker process.

:func:`pretrain_and_evaluate` trains the demo backbone on one identity labelling for a fixed
number of steps, then measures zero-shot kNN retrieval of its teacher backbone on the world's
benchmark. It returns plain data (numbers and paths), so a process pool can carry it back.
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
    ``threads``, ``log_every``, ``curriculum`` ((fraction of the budget, K) pairs).

    Returns ``{"method", "seed", "mAP", "rank1", "mINP", "seconds", "backbone", "losses",
    "steps"}`` (``losses``: (step, loss, teacher entropy) triples)."""
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(int(job.get("threads", 1)))
    from cion.pretrain import PretrainConfig, pretrain
    from cion.pretrain.backbone import load_backbone
    from cion.pretrain.evaluate import zero_shot_map

    method, seed, steps = job["method"], int(job["seed"]), int(job["steps"])
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
    return {"method": method, "seed": seed, **scores, "seconds": seconds,
            "backbone": str(result.backbone), "steps": result.steps, "epochs": config.epochs,
            "losses": [(h["step"], h["loss"], h["teacher_entropy"]) for h in result.history]}
