"""``cion demo``: the whole CION flow on the synthetic world, in minutes, on a CPU.

Stages (each prints progress): 1 world -> 2 extractor features -> 3 progressive denoising -> 4
pre-training of every method x seed, each followed by zero-shot evaluation and a short
supervised fine-tune -> 5 scores -> 6 figures, report.md, results.json. See
:mod:`cion.demo.plan` for what runs and :mod:`cion.demo.report` for what is written.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cion.demo.plan import METHODS, TRAINED, USL_METHODS, DemoPlan, demo_plan
from cion.errors import CionError

LEVEL_SETS = (("tracklet",), ("tracklet", "video"), ("tracklet", "video", "cross"))


def _global_tracklets(df: pd.DataFrame) -> np.ndarray:
    """(N,) tracklet labels unique over the whole manifest (tracklet ids are per video)."""
    return df.groupby(["video", "tracklet"], sort=False).ngroup().to_numpy(np.int64)


def make_world(plan: DemoPlan, out: Path, seed: int) -> tuple[Path, pd.DataFrame]:
    from cion.data.manifest import read_manifest
    from cion.data.synth import WorldConfig, generate_world

    world = out / "world"
    cfg = WorldConfig(**{"identities": plan.identities, "videos": plan.videos,
                         "cameras": plan.cameras, "image_size": plan.image_size,
                         "bench_identities": plan.bench_identities, "seed": seed, **plan.world})
    if not (world / "pretrain" / "manifest.parquet").exists():
        generate_world(world, cfg, workers=1, progress=False)
    return world, read_manifest(world / "pretrain" / "manifest.parquet")


def denoise_levels(df: pd.DataFrame, features: np.ndarray, plan: DemoPlan) -> dict:
    """Identities after each level (calibrated thresholds), per-stage statistics, and the
    outcome of the full pipeline for other feature treatments and link budgets (``variants``:
    what each choice of the plan buys, made visible)."""
    from cion.denoise import denoise
    from cion.denoise.calibrate import calibrate_thresholds
    from cion.denoise.features import prepare_features
    from cion.denoise.io import centre_groups
    from cion.denoise.metrics import pairwise_precision_recall, same_person_pair_share

    video, tracklet = df["video"].to_numpy(), df["tracklet"].to_numpy()
    truth = df["true_identity"].to_numpy(np.int64)

    prepared: dict[tuple, object] = {}

    def source(centre, whiten):
        """The features centred / whitened one way, fitted once and shared by every call."""
        if (centre, whiten) not in prepared:
            prepared[(centre, whiten)] = prepare_features(
                features, centre=centre_groups(df, centre), whiten=whiten)
        return prepared[(centre, whiten)]

    def thresholds(centre, whiten, false_links: float) -> dict:
        return calibrate_thresholds(source(centre, whiten), video, tracklet,
                                    quantile=plan.calibrate_quantile, false_links=false_links,
                                    range_half_width=1000)

    th = thresholds(plan.centre, plan.whiten, plan.false_links)
    labels = {"raw": _global_tracklets(df)}
    full = None
    for levels in LEVEL_SETS:
        res = denoise(source(plan.centre, plan.whiten), video, tracklet, sigma_cst=th["sigma_cst"],
                      sigma_drm=th["sigma_drm"], levels=levels)
        labels[levels[-1]] = res.identity
        full = res
    stats = full.stats                                   # raw, tracklet, video, cross
    quality = [pairwise_precision_recall(labels[s["level"]], truth) for s in stats]
    variants = []
    for centre, whiten, fl in _variants(plan):
        used = (centre, whiten, fl) == (plan.centre, plan.whiten, plan.false_links)
        t = th if used else thresholds(centre, whiten, fl)
        ident = labels["cross"] if used else denoise(
            source(centre, whiten), video, tracklet, sigma_cst=t["sigma_cst"],
            sigma_drm=t["sigma_drm"], noise_stats=False).identity
        q = pairwise_precision_recall(ident, truth)
        variants.append({"centre": centre, "whiten": whiten, "false_links": fl,
                         "sigma_drm": t["sigma_drm"], "identities": int(ident.max() + 1),
                         "precision": q["precision"], "recall": q["recall"], "used": used})
    return {"thresholds": th, "labels": labels, "stats": stats, "quality": quality,
            "variants": variants,
            "same_person_pair_share": same_person_pair_share(video, tracklet, truth)}


def _variants(plan: DemoPlan) -> list[tuple]:
    """(centre, whiten, false_links) settings the report compares: the library's defaults, each
    of the plan's choices added in turn, and the plan's features at smaller link budgets."""
    out = [(None, None, 0.1), (None, None, plan.false_links)]
    if plan.centre:
        out.append((plan.centre, None, plan.false_links))
    out += [(plan.centre, plan.whiten, fl) for fl in (0.1, 0.3) if fl < plan.false_links]
    out.append((plan.centre, plan.whiten, plan.false_links))
    return list(dict.fromkeys(out))


def extractor_name(plan: DemoPlan) -> str:
    """How the denoising features are made, in words."""
    return ("stripe colour histogram (cion.handcrafted), no training"
            + (f", centred per {plan.centre}" if plan.centre else "")
            + (f", PCA-whitened to {plan.whiten} dimensions" if plan.whiten else ""))


def demo_recipe(plan: DemoPlan) -> dict:
    """The plan's pre-training recipe (YAML) with its overrides applied."""
    import yaml

    return {**yaml.safe_load(plan.recipe.read_text()), **plan.overrides}


def demo_job(plan: DemoPlan, method: str, seed: int, manifest: Path, root: str, world: Path,
             run_dir: Path, recipe: dict | None = None, curriculum=None) -> dict:
    """One job for :func:`cion.demo.jobs.pretrain_and_evaluate`, as the demo runs it;
    ``recipe`` / ``curriculum`` default to the plan's."""
    return {"method": method, "seed": seed, "manifest": str(manifest), "root": root,
            "config": demo_recipe(plan) if recipe is None else recipe, "steps": plan.steps,
            "curriculum": [list(c) for c in (curriculum or plan.curriculum)],
            "run_dir": str(run_dir), "market": str(world / "market"), "threads": 1,
            "finetune_steps": plan.finetune_steps, "usl_epochs": plan.usl_epochs,
            "usl_iters": plan.usl_iters, "usl_methods": list(USL_METHODS)}


def _jobs(plan: DemoPlan, out: Path, world: Path, manifests: dict, root: str) -> list[dict]:
    """Every method x seed; ``random`` (no pre-training) first, as it is the quickest."""
    recipe = demo_recipe(plan)
    pairs = [("random", s) for s in plan.seeds] + [(m, s) for s in plan.seeds for m in TRAINED]
    return [demo_job(plan, m, s, manifests.get(m, ""), root, world, out / "runs" / f"{m}_seed{s}",
                     recipe) for m, s in pairs]


def run_jobs(jobs: list[dict], workers: int, log: Callable[[str], None]) -> list[dict]:
    """Run pre-training jobs, ``workers`` at a time (one CPU thread each), in job order."""
    from cion.demo.jobs import pretrain_and_evaluate

    results = {}
    if workers <= 1:
        for i, job in enumerate(jobs):
            log(f"[demo]   run {i + 1}/{len(jobs)}: {job['method']} (seed {job['seed']})")
            results[i] = pretrain_and_evaluate(job)
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(pretrain_and_evaluate, job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                r = fut.result()
                results[futures[fut]] = r
                log(f"[demo]   done {len(results)}/{len(jobs)}: {r['method']} (seed {r['seed']}) "
                    f"mAP {100 * r['mAP']:.1f}%  rank-1 {100 * r['rank1']:.1f}%  "
                    f"({r['seconds']:.0f} s)")
    return [results[i] for i in range(len(jobs))]


def summarise(runs: list[dict], key: str | None = None) -> dict:
    """``{method: {"mAP", "rank1", "mAP_std", "rank1_std", "seeds": [...]}}`` (fractions) of
    the zero-shot scores, or of ``run[key]`` (e.g. ``"finetuned"``) where runs have it."""
    if key is not None:
        runs = [{"method": r["method"], "seed": r["seed"], **r[key]} for r in runs if key in r]
    table = {}
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        m = np.array([r["mAP"] for r in rs])
        r1 = np.array([r["rank1"] for r in rs])
        table[method] = {"mAP": float(m.mean()), "rank1": float(r1.mean()),
                         "mAP_std": float(m.std()), "rank1_std": float(r1.std()),
                         "seeds": [{"seed": r["seed"], "mAP": r["mAP"], "rank1": r["rank1"]}
                                   for r in rs]}
    return table


def pair_diagnostic(df: pd.DataFrame, runs: list[dict], recipe: dict, threads: int = 1) -> dict:
    """:func:`cion.demo.pairs.measure` for every run (random initialisation included) on 400
    seeded pairs of each kind of the clean pre-training images; views use the recipe's
    augmentation (global crops only). Runs on ``threads`` CPU threads."""
    import torch

    from cion.data.manifest import resolve_paths
    from cion.data.transforms import MultiCropAugment, MultiCropConfig
    from cion.demo import pairs
    from cion.demo.figures import run_backbone

    size = tuple(recipe["global_size"])
    clean = np.where(df["noise"].to_numpy() == "none", df["true_identity"].to_numpy(np.int64), -1)
    sampled = pairs.sample_pairs(_global_tracklets(df), df["video"].factorize()[0], clean, seed=0)
    augment = MultiCropAugment(MultiCropConfig(
        global_size=size, local_crops=0, global_scale=tuple(recipe["global_scale"]),
        **recipe.get("augment", {})))
    models = ((r["method"], r["seed"], run_backbone(r["method"], runs, recipe["arch"], size, r["seed"]))
              for r in runs)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return pairs.measure(models, [str(p) for p in resolve_paths(df)], sampled, size, augment)
    finally:
        torch.set_num_threads(before)


def run_demo(out: str | os.PathLike = "demo_out", quick: bool = False, seed: int = 0,
             workers: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out``; returns the content of ``out/results.json``."""
    import torch

    from cion.data.manifest import resolve_paths
    from cion.demo import figures, report
    from cion.handcrafted import colour_histogram_files

    t_start = time.perf_counter()
    plan = demo_plan(quick, seed)
    if workers is not None:
        plan.workers = workers
    plan.workers = max(1, min(plan.workers, os.cpu_count() or 1))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").write_text("")
        (out / ".write_test").unlink()
    except OSError as err:
        raise CionError(f"{out}: cannot write the demo there ({err}). Fix: pass --out DIR "
                        "with a writable directory") from None
    torch.set_num_threads(1)
    timings = {}

    def stage(n: int, text: str) -> None:
        log(f"[demo] {n}/6 {text} ({time.perf_counter() - t_start:.0f} s)")

    stage(1, f"synthetic world: {plan.identities} pre-training identities in {plan.videos} "
             f"videos, {plan.bench_identities} benchmark identities")
    t = time.perf_counter()
    world, df = make_world(plan, out, seed)
    timings["world"] = time.perf_counter() - t
    log(f"[demo]   {len(df)} images, {_global_tracklets(df).max() + 1} tracklets, "
        f"{df['true_identity'].max() + 1} true identities, noise: "
        f"{(df['noise'] != 'none').mean() * 100:.0f}% of images")

    stage(2, f"extractor features for denoising: {extractor_name(plan)}")
    t = time.perf_counter()
    feats = colour_histogram_files(resolve_paths(df), size=plan.image_size)
    timings["features"] = time.perf_counter() - t

    stage(3, "progressive denoising: tracklet -> video -> cross-video")
    t = time.perf_counter()
    den = denoise_levels(df, feats, plan)
    timings["denoise"] = time.perf_counter() - t
    for s, q in zip(den["stats"], den["quality"]):
        log(f"[demo]   {s['level']:>9}: {s['identities']:4d} identities, "
            f"{s['images_kept'] + s['images_reallocated']:5d} images kept, pairwise precision "
            f"{q['precision']:.2f} recall {q['recall']:.2f}")

    labels_dir = out / "labels"
    labels_dir.mkdir(exist_ok=True)
    sources = {"instance": np.arange(len(df)), "tracklet": den["labels"]["raw"],
               "cion_video": den["labels"]["video"], "cion": den["labels"]["cross"],
               "oracle": df["true_identity"].to_numpy(np.int64)}   # -1 (false detection): dropped
    manifests = {}
    for method, lab in sources.items():
        manifests[method] = labels_dir / f"{method}.parquet"
        pd.DataFrame(df).assign(identity=lab).to_parquet(manifests[method], index=False)

    jobs = _jobs(plan, out, world, manifests, str(df.attrs.get("root", world / "pretrain")))
    stage(4, f"pre-training {len(TRAINED)} methods x {len(plan.seeds)} seed(s) of {plan.steps} "
             f"steps, {plan.workers} at a time; every run (and the random initialisation) is "
             f"then evaluated zero-shot and after {plan.finetune_steps} fine-tuning steps"
             + (f"; {', '.join(USL_METHODS)} also after Cluster Contrast (USL) without labels"
                if plan.usl_epochs else ""))
    t = time.perf_counter()
    runs = run_jobs(jobs, plan.workers, log)
    timings["pretrain"] = time.perf_counter() - t

    recipe = jobs[0]["config"]
    stage(5, "scores: zero-shot kNN retrieval and after the short supervised fine-tune")
    arch = recipe["arch"]
    size = tuple(recipe["global_size"])
    table = summarise(runs)
    tuned = summarise(runs, "finetuned")
    usl = summarise(runs, "usl")
    for method, row in table.items():
        ft, us = tuned.get(method), usl.get(method)
        log(f"[demo]   {method:>10}: zero-shot mAP {100 * row['mAP']:5.1f} ± "
            f"{100 * row['mAP_std']:.1f}  rank-1 {100 * row['rank1']:5.1f}"
            + (f" | fine-tuned mAP {100 * ft['mAP']:5.1f} ± {100 * ft['mAP_std']:.1f}" if ft else "")
            + (f" | USL mAP {100 * us['mAP']:5.1f} ± {100 * us['mAP_std']:.1f}" if us else ""))

    stage(6, "figures, report.md, results.json")
    t = time.perf_counter()
    figs = figures.make_all(out, world, den, runs, table, arch, size, plan, tuned)
    pair_table = pair_diagnostic(df, runs, recipe, threads=plan.workers)
    figs["pairs"] = figures.plot_pair_distances(pair_table, out / "figures" / "pair_distances.png")
    timings["figures"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    results = {
        "zero_shot": {m: {"mAP": r["mAP"], "rank1": r["rank1"], "mAP_std": r["mAP_std"],
                          "rank1_std": r["rank1_std"], "seeds": r["seeds"],
                          "same_camera_top1": r.get("same_camera_top1")} for m, r in table.items()},
        "finetuned": {m: {k: r[k] for k in ("mAP", "rank1", "mAP_std", "rank1_std", "seeds")}
                      for m, r in tuned.items()},
        "usl": {m: {k: r[k] for k in ("mAP", "rank1", "mAP_std", "rank1_std", "seeds")}
                for m, r in usl.items()},
        "chance_same_camera_top1": figures.chance_same_camera(world),
        "pair_distances": pair_table,
        "denoising": {"extractor": extractor_name(plan),
                      "centre": plan.centre, "whiten": plan.whiten,
                      "false_links": plan.false_links,
                      "thresholds": {k: den["thresholds"][k] for k in ("sigma_cst", "sigma_drm")},
                      "calibration_quantile": plan.calibrate_quantile,
                      "variants": den["variants"],
                      "same_person_pair_share": den["same_person_pair_share"],
                      "stages": [dict(s, **{k: q[k] for k in ("precision", "recall", "f1")})
                                 for s, q in zip(den["stats"], den["quality"])]},
        "plan": {"quick": quick, "seed": seed, "seeds": list(plan.seeds), "steps": plan.steps,
                 "arch": arch, "image_size": list(size), "images": len(df),
                 "recipe": str(plan.recipe.name), "curriculum": [list(c) for c in plan.curriculum],
                 "finetune_steps": plan.finetune_steps, "usl_epochs": plan.usl_epochs,
            "usl_iters": plan.usl_iters, "usl_methods": list(USL_METHODS)},
        "runs": [{k: v for k, v in r.items() if k != "losses"} for r in runs],
        "figures": {k: str(Path(v).relative_to(out)) for k, v in figs.items()},
        "seconds": timings,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    report.write_report(out / "report.md", results, runs)
    log(f"[demo] done in {timings['total']:.0f} s: {out / 'report.md'}")
    return results
