"""The ``cion`` command line: one Typer app, thin wrappers over the stage functions.

Each command parses its options, calls one importable function and prints what it made.
Heavy imports (torch, timm) happen inside the commands so ``cion --help`` stays instant.
User errors (:class:`cion.errors.CionError`, bad options) print one line and exit with 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from cion.errors import CionError

HELP = """CION person re-identification pre-training and the ReIDZoo backbones.

\b
The flow, one command per stage (files in between: Parquet manifests,
.npy features, safetensors weights, JSON stats):
  synth     make the synthetic pedestrian world (noisy tracklets + a Market-style benchmark)
  ingest    videos / image folders -> tracklet manifest
  extract   images -> L2-normalised features (.npy)
  denoise   tracklets -> cross-video identities (progressive multi-level denoising)
  pretrain  identity-guided self-distillation of any ReIDZoo backbone
  finetune  supervised BNNeck ReID training (MGN, Cluster Contrast: not yet)
  evaluate  mAP / CMC / mINP, re-ranking, ranked lists
  zoo       list, inspect, convert and export the 32 ReIDZoo backbones
  demo      the whole flow on the synthetic world, with a report
Commands not listed below have not landed yet.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None)

# Typer vendors its own click; its exception classes are reached through these public names.
_UsageError = typer.BadParameter.__mro__[1]
_ClickException = typer.BadParameter.__mro__[2]


@app.callback()
def _root() -> None:
    # a callback makes `cion` a command group even while it has a single command
    pass


def _parse_size(text: str, option: str) -> tuple[int, int]:
    """'128x64' -> (128, 64) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CionError(f"{option} must look like HEIGHTxWIDTH, e.g. 128x64 (got '{text}')") from None
    if h < 16 or w < 8:
        raise CionError(f"{option} {text} is too small: at least 16x8 pixels")
    return h, w


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output directory (created)."),
    identities: int = typer.Option(300, help="People in the noisy pre-training set (output A)."),
    videos: int = typer.Option(80, help="Videos in the pre-training set."),
    cameras: int = typer.Option(6, help="Cameras, each with its own look."),
    image_size: str = typer.Option("128x64", help="Crop size HEIGHTxWIDTH."),
    bench_identities: int = typer.Option(200, help="People in the benchmark (output B), half train / half test."),
    switch_rate: float = typer.Option(0.05, help="Share of person-tracklet rows that are ID switches."),
    false_detection_rate: float = typer.Option(0.05, help="Share of rows that are false detections."),
    fragment_rate: float = typer.Option(0.25, help="Share of appearances split into several tracklets."),
    seed: int = typer.Option(0, help="Everything is a function of this seed."),
    workers: int = typer.Option(1, help="Processes rendering images (output is identical for any value)."),
) -> None:
    """Generate the synthetic pedestrian world: noisy pre-training tracklets (A), a Market-1501
    layout benchmark with disjoint identities (B), and a contact sheet."""
    from cion.data.synth import WorldConfig, generate_world
    from cion.fileio import ensure_writable_dir

    cfg = WorldConfig(
        identities=identities, videos=videos, cameras=cameras,
        image_size=_parse_size(image_size, "--image-size"), bench_identities=bench_identities,
        switch_rate=switch_rate, false_detection_rate=false_detection_rate,
        fragment_rate=fragment_rate, seed=seed)
    ensure_writable_dir(out)
    summary = generate_world(out, cfg, workers=workers, progress=True)
    typer.echo(summary.describe())


@app.command()
def denoise(
    manifest: Path = typer.Option(..., "--manifest", help="Input tracklet manifest (Parquet)."),
    features: Path = typer.Option(..., "--features", help="Features .npy (manifest rows x D, fp16/fp32)."),
    out: Path = typer.Option(..., "--out", help="Output manifest OUT.parquet (+ OUT.stats.json, OUT.png)."),
    sigma_cst: float = typer.Option(0.2, "--sigma-cst", help="Intra-consistency threshold (paper 0.2)."),
    sigma_drm: float = typer.Option(0.18, "--sigma-drm", help="Inter-discrimination threshold (paper 0.18)."),
    range_half_width: int = typer.Option(1000, "--range", help="Half-width r_s of the cross-video sliding range."),
    levels: str = typer.Option("tracklet,video,cross", "--levels", help="Levels to run, comma-separated."),
    cross_order: str = typer.Option("sequence", "--cross-order",
                                    help="Sequence to slide over: sequence (paper), coarse, both."),
    calibrate: Optional[float] = typer.Option(
        None, "--calibrate", help="Choose the thresholds from the features instead (for extractors "
        "other than the paper's ReID ViT-B): sigma_cst = this quantile (e.g. 0.8) of within-tracklet "
        "deviations; sigma_drm = the distance at which random tracklet pairs from different videos "
        "link with probability FALSE_LINKS / (2 * range). Values used go to OUT.stats.json."),
    false_links: float = typer.Option(
        0.1, "--false-links", help="With --calibrate: false cross-video links allowed per tracklet. "
        "Raise it (e.g. 1.0) for small collections where the same people fill many videos."),
    centre: str = typer.Option(
        "none", "--centre", help="Centre features on the mean of their video or camera first "
        "(none, video, camera): removes what one camera adds to all its images."),
    whiten: int = typer.Option(
        0, "--whiten", help="PCA-whiten the (centred) features to this many dimensions first "
        "(0: off); makes distances between unrelated images more alike, so a threshold links "
        "more true pairs before wrong ones chain."),
) -> None:
    """Progressive multi-level denoising: tracklets -> cross-video identities (paper Eq. 1-7)."""
    from cion.denoise.io import denoise_manifest, output_paths

    stats = denoise_manifest(manifest, features, out, sigma_cst=sigma_cst, sigma_drm=sigma_drm,
                             range_half_width=range_half_width, levels=levels,
                             cross_order=cross_order, calibrate=calibrate,
                             false_links=false_links, centre=centre, whiten=whiten or None,
                             progress=True)
    p = stats["params"]
    typer.echo(f"sigma_cst {p['sigma_cst']:.4g}  sigma_drm {p['sigma_drm']:.4g}  r_s "
               f"{p['range_half_width']}  levels {','.join(p['levels']) or 'none'}")
    for s in stats["levels"]:
        noise = f"  n_S {s['n_S']:.4f}" if "n_S" in s else ""
        typer.echo(f"{s['level']:>9}: {s['identities']:>9,} identities  kept {s['images_kept']:,}  "
                   f"reallocated {s['images_reallocated']:,}  discarded "
                   f"{s['images_discarded']:,}{noise}  {s['seconds']:.2f}s")
    if "ground_truth" in stats:
        g = stats["ground_truth"]
        typer.echo(f"vs true_identity: pairwise precision {g['precision']:.4f} recall {g['recall']:.4f}")
    _, stats_p, png_p = output_paths(out)
    typer.echo(f"wrote {out}, {stats_p}, {png_p}")


@app.command()
def pretrain(
    data: Path = typer.Option(..., "--data", help="Manifest (Parquet) whose 'identity' column defines the positives."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Backbone name (cion zoo list); default from --config."),
    out: Path = typer.Option(..., "--out", help="Run directory; running again with the same --out resumes."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML recipe (default configs/pretrain/<arch>.yaml when present)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="GLOBAL batch size in images (all processes)."),
    local_crops: Optional[int] = typer.Option(None, "--local-crops", help="Local views per image."),
    global_size: Optional[str] = typer.Option(None, "--global-size", help="Global view size HEIGHTxWIDTH (256x128)."),
    local_size: Optional[str] = typer.Option(None, "--local-size", help="Local view size HEIGHTxWIDTH (128x64)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every random choice."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps in total."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data-loader processes per training process."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    max_bad_share: float = typer.Option(0.01, "--max-bad-share", help="Unreadable images are "
                                        "replaced by another image of their identity and listed in "
                                        "OUT/bad_images.txt; past this share of the images the run stops."),
) -> None:
    """Identity-guided self-distillation (CION) of any ReIDZoo backbone; works under torchrun."""
    from cion.fileio import ensure_writable_dir
    from cion.pretrain import PretrainConfig
    from cion.pretrain import pretrain as run_pretrain

    overrides = dict(arch=arch, epochs=epochs, batch_size=batch_size, local_crops=local_crops,
                     global_size=list(_parse_size(global_size, "--global-size")) if global_size else None,
                     local_size=list(_parse_size(local_size, "--local-size")) if local_size else None,
                     seed=seed, max_steps=max_steps, num_workers=workers, device=device,
                     precision=precision)
    if config is None and arch:
        recipe = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / f"{arch}.yaml"
        config = recipe if recipe.exists() else None
    if config is not None:
        cfg = PretrainConfig.from_yaml(config, **overrides)
    else:
        if not arch:
            raise CionError("give --arch NAME or --config FILE (configs/pretrain/ has one per zoo model)")
        cfg = PretrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    ensure_writable_dir(out)
    result = run_pretrain(data, cfg, out, progress=progress, max_bad_share=max_bad_share)
    from cion import distributed
    if distributed.rank() == 0:
        typer.echo(f"backbone: {result.backbone}\nmetrics: {result.metrics}\n"
                   f"steps: {result.steps}, loss {result.first_loss} -> {result.last_loss}")
    distributed.cleanup()


zoo_app = typer.Typer(help="The 32 ReIDZoo backbones: list, inspect, convert the authors' checkpoints, "
                           "export to ONNX.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("list")
def zoo_list(family: Optional[str] = typer.Option(None, "--family", help="Only this family (e.g. vit).")) -> None:
    """One line per model: family, parameters, feature width, the authors' finetuned mAP."""
    from cion.models import list_models, model_info

    try:
        names = list_models(family)
    except ValueError as err:
        raise CionError(str(err)) from None
    typer.echo(f"{'name':<18}{'family':<12}{'params(M)':>10}{'dim':>6}{'mAP Market/MSMT':>17}  reparam")
    for name in names:
        info = model_info(name)
        mAP = info["reported_mAP"]
        typer.echo(f"{name:<18}{info['family']:<12}{info['params'] / 1e6:>10.2f}{info['feature_dim']:>6}"
                   f"{mAP['market1501']:>10.1f} / {mAP['msmt17']:<4.1f}  {'yes' if info['reparameterizable'] else ''}")


@zoo_app.command("info")
def zoo_info(name: str = typer.Argument(..., help="Model name (cion zoo list)."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Family, structure used, widths, parameters, checkpoint prefix and pre-training recipe hint."""
    import json

    from cion.models import model_info

    info = model_info(name)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        typer.echo(f"{key:<18} {value}")


@zoo_app.command("convert")
def zoo_convert(
    checkpoint: Path = typer.Argument(..., help="The authors' released pre-training checkpoint (.pth)."),
    arch: str = typer.Option(..., "--arch", help="Model name (cion zoo list)."),
    out: Path = typer.Option(..., "--out", help="Output backbone file (.safetensors)."),
    which: str = typer.Option("teacher", "--which", help="Checkpoint entry to take: teacher or student."),
) -> None:
    """Authors' .pth -> our safetensors backbone (safe unpickling, strict key check)."""
    from cion.models.checkpoint import convert_official
    from cion.models.registry import get_entry

    from cion.fileio import ensure_writable_file

    get_entry(arch)
    if out.suffix != ".safetensors":
        raise CionError(f"--out {out} should end in .safetensors")
    ensure_writable_file(out)
    report = convert_official(checkpoint, arch, out, which)
    typer.echo(report.describe())
    typer.echo(f"wrote {out}")


@zoo_app.command("export")
def zoo_export(
    name: str = typer.Argument(..., help="Model name (cion zoo list)."),
    onnx: Path = typer.Option(..., "--onnx", help="Output .onnx file."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights: our .safetensors or the authors' .pth."),
    img_size: str = typer.Option("256x128", "--img-size", help="Input HEIGHTxWIDTH baked into the graph."),
    reparameterize: bool = typer.Option(True, "--reparameterize/--no-reparameterize",
                                        help="Fold RepViT/FastViT branches first (ignored for other families)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (VOLO needs >= 18)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with PyTorch outputs."),
) -> None:
    """Export a backbone to ONNX (dynamic batch) and check it with onnxruntime."""
    from cion.models import create_model, model_info
    from cion.models.export import export_onnx
    from cion.models.reparam import reparameterize as fold

    from cion.fileio import ensure_writable_file

    size = _parse_size(img_size, "--img-size")
    ensure_writable_file(onnx, "--onnx")
    model = create_model(name, checkpoint=checkpoint).eval()
    if reparameterize and model_info(name)["reparameterizable"]:
        model = fold(model, inplace=True)
    report = export_onnx(model, onnx, img_size=size, opset=opset, check=check)
    typer.echo(report.describe())



@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output directory (created)."),
    quick: bool = typer.Option(False, "--quick", help="Small world, one seed, 80 steps: about a minute "
                               "(a smoke test; its scores are no comparison)."),
    seed: int = typer.Option(0, help="Seed of the world and of the first pre-training run."),
    workers: Optional[int] = typer.Option(None, help="Pre-training runs in parallel (default 2)."),
) -> None:
    """The whole CION flow on the synthetic world: world -> features -> denoising ->
    pre-training of 5 labellings (+ random init) -> zero-shot evaluation and a short
    supervised fine-tune -> report.md, results.json and figures in OUT."""
    from cion.demo import run_demo
    from cion.fileio import ensure_writable_dir

    ensure_writable_dir(out)
    run_demo(out, quick=quick, seed=seed, workers=workers)


@app.command()
def extract(
    data: Path = typer.Option(..., "--data", help="Images: a dataset folder (Market / MSMT17 / "
                              "query+gallery / <identity>/<image> / any images), a .parquet "
                              "manifest, a .csv table or a CION-AL .json."),
    model: str = typer.Option(..., "--model", help="colour-hist (no network), a ReIDZoo name, "
                              "or a .safetensors backbone file."),
    out: Path = typer.Option(..., "--out", help="Features file F.npy; the manifest goes to "
                             "F.manifest.parquet and run info to F.json beside it."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights for a ReIDZoo --model "
                                              "(.safetensors or the authors' .pth)."),
    img_size: Optional[str] = typer.Option(None, help="Input HEIGHTxWIDTH (default 256x128; "
                                           "colour-hist 64x32)."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Average with the mirrored image."),
    dtype: str = typer.Option("float16", help="float16 or float32."),
    device: Optional[str] = typer.Option(None, help="cpu / cuda (default: cuda if available)."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    max_bad_share: float = typer.Option(0.01, "--max-bad-share", help="Unreadable images are "
                                        "skipped (left out of F.npy and its manifest) and listed in "
                                        "F.bad_images.txt; past this share of the images the run stops."),
) -> None:
    """Images -> L2-normalised features (.npy, manifest row order), batched, with progress."""
    from cion.extract import extract_to_files

    size = _parse_size(img_size, "--img-size") if img_size else None
    info = extract_to_files(data, model, out, checkpoint=checkpoint, img_size=size,
                            batch_size=batch_size, flip=flip, dtype=dtype, device=device,
                            workers=workers, max_bad_share=max_bad_share)
    if info["rank"] == 0:
        typer.echo(f"{info['rows']} x {info['dim']} {info['dtype']} features -> {info['features']} "
                   f"({info['images_per_second']} images/s)\nmanifest -> {info['manifest']}")
    if info["rank"] == 0 and info.get("bad_images"):
        typer.echo(f"skipped {info['bad_images']} unreadable image(s), listed in {info['bad_list']}")
    from cion import distributed
    distributed.cleanup()


@app.command()
def evaluate(
    model: str = typer.Option(..., "--model", help="colour-hist, a ReIDZoo name, or a "
                              ".safetensors backbone file."),
    dataset: str = typer.Option(..., "--dataset", help="market1501 | msmt17 (V1/V2 detected) | "
                                "folder (query/ + gallery/ identity folders) | table (CSV/Parquet "
                                "with a split column)."),
    root: Path = typer.Option(..., "--root", help="Dataset folder (or the table file)."),
    rerank: bool = typer.Option(False, "--rerank/--no-rerank", help="Also k-reciprocal re-ranking."),
    out: Path = typer.Option(Path("cion_eval"), "--out", help="Folder for metrics.json and PNGs."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights for a ReIDZoo --model."),
    metric: str = typer.Option("cosine", help="cosine | euclidean | sqeuclidean."),
    k1: int = typer.Option(20, help="Re-ranking k1."),
    k2: int = typer.Option(6, help="Re-ranking k2."),
    lambda_value: float = typer.Option(0.3, "--lambda", help="Re-ranking weight of the original distance."),
    img_size: Optional[str] = typer.Option(None, help="Input HEIGHTxWIDTH (default 256x128; colour-hist 64x32)."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Average with the mirrored image."),
    device: Optional[str] = typer.Option(None, help="cpu / cuda (default: cuda if available)."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Ranked lists, t-SNE, CMC PNGs."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Leave unreadable query / "
                                         "gallery images out (listed in OUT/bad_images.txt) instead "
                                         "of stopping; the metrics then cover fewer images."),
) -> None:
    """mAP / CMC / mINP of a model on a ReID benchmark: table, metrics.json and PNG figures."""
    from cion.evaluation.pipeline import evaluate_model, format_table

    size = _parse_size(img_size, "--img-size") if img_size else None
    report = evaluate_model(model, dataset, root, checkpoint=checkpoint, out_dir=out, rerank=rerank,
                            k1=k1, k2=k2, lambda_value=lambda_value, metric=metric,
                            batch_size=batch_size, flip=flip, img_size=size, device=device,
                            workers=workers, figures=figures, echo=typer.echo,
                            skip_bad_images=skip_bad_images)
    typer.echo(format_table(report))
    typer.echo(f"numbers -> {report['json']}")
    for f in report["figures"]:
        typer.echo(f"figure  -> {f}")


@app.command()
def finetune(
    data: Path = typer.Option(..., "--data", help="Dataset folder (or table file) with a train split."),
    dataset: str = typer.Option("market1501", "--dataset", help="market1501 | msmt17 | folder "
                                "(train/ query/ gallery/ identity folders) | table (CSV/Parquet "
                                "with a split column)."),
    arch: str = typer.Option(..., "--arch", help="Backbone: a ReIDZoo name (cion zoo list) or "
                             "test_resnet / test_vit."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Initial weights: a "
                                              "pre-training backbone.safetensors (or the authors' "
                                              ".pth for a ReIDZoo arch); default random init."),
    out: Path = typer.Option(..., "--out", help="Output directory: backbone.safetensors + finetune.json."),
    steps: int = typer.Option(600, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per batch (identities x --instances)."),
    instances: int = typer.Option(4, "--instances", help="Images per identity in a batch."),
    lr: float = typer.Option(3.5e-4, "--lr", help="Peak learning rate (warm-up, then cosine to 1%)."),
    warmup_steps: int = typer.Option(50, "--warmup-steps", help="Linear warm-up steps."),
    img_size: str = typer.Option("256x128", "--img-size", help="Input HEIGHTxWIDTH for training and evaluation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation, batches and augmentation."),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam (weight decay 5e-4) | sgd (momentum 0.9)."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Score query vs gallery "
                                  "(mAP / rank-1 / mINP) before and after fine-tuning."),
    device: str = typer.Option("cpu", "--device", help="Where training runs: cpu | cuda | cuda:N."),
) -> None:
    """Supervised BNNeck fine-tuning (ID + triplet loss) of a random or pre-trained backbone on a
    ReID train split; writes OUT/backbone.safetensors and OUT/finetune.json."""
    from cion.finetune import SupervisedConfig
    from cion.finetune.cli_stage import format_summary, run_finetune

    cfg = SupervisedConfig(steps=steps, batch_size=batch_size, instances=instances, lr=lr,
                           warmup_steps=warmup_steps, optimizer=optimizer, seed=seed, device=device,
                           image_size=_parse_size(img_size, "--img-size"))
    report = run_finetune(data, out, arch=arch, dataset=dataset, checkpoint=checkpoint, cfg=cfg,
                          evaluate=evaluate, log=typer.echo)
    typer.echo(format_summary(report))


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: one-line errors, exit status 2 for user errors."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="cion", standalone_mode=False)
    except typer.Abort:
        typer.echo("cion: aborted", err=True)
        sys.exit(130)
    except _UsageError as err:
        name = err.ctx.command_path if err.ctx else "cion"
        typer.echo(f"{name}: error: {err.format_message()}", err=True)
        sys.exit(2)
    except _ClickException as err:
        typer.echo(f"cion: error: {err.format_message()}", err=True)
        sys.exit(2)
    except CionError as err:
        typer.echo(f"cion: error: {err}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
