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
The flow, one command per stage, plain files in between (Parquet manifests,
.npy features, safetensors weights, JSON stats):
  ingest -> extract -> denoise -> pretrain -> finetune -> evaluate
`cion synth` makes a synthetic world to try it on; `cion demo` runs the whole flow on it.
The same option means the same thing in every command: --data (input), --out (output),
--img-size HEIGHTxWIDTH, --device, --seed, --workers.
"""

#: The sub-commands in the order of the flow, each with its one-line description for
#: ``cion --help`` (commands missing here are listed after them, in the order they were added).
FLOW = {
    "synth": "Synthetic world: noisy tracklets + a Market-style benchmark.",
    "ingest": "Videos -> person tracklets (detect, track, crop), manifest.",
    "extract": "Images -> L2-normalised features (.npy, manifest row order).",
    "denoise": "Tracklets -> cross-video identities (multi-level denoising).",
    "pretrain": "Identity-guided self-distillation of a ReIDZoo backbone.",
    "finetune": "ReID fine-tuning: supervised BNNeck, MGN, Cluster Contrast.",
    "evaluate": "mAP / CMC / mINP on a ReID benchmark, ranked lists.",
    "zoo": "The 32 ReIDZoo backbones: list, inspect, convert, export.",
    "demo": "The whole flow on the synthetic world, with a report.",
}


class _FlowGroup(typer.core.TyperGroup):
    """``cion``'s command group: sub-commands listed in the order of :data:`FLOW`."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: list(FLOW).index(n) if n in FLOW else len(FLOW))

    def get_command(self, ctx, name: str):
        command = super().get_command(ctx, name)
        if command is not None and name in FLOW:
            command.short_help = FLOW[name]
        return command


app = typer.Typer(cls=_FlowGroup, help=HELP, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None)

# Typer vendors its own click; its exception classes are reached through these public names.
_UsageError = typer.BadParameter.__mro__[1]
_ClickException = typer.BadParameter.__mro__[2]


@app.callback()
def _root() -> None:
    # a callback makes `cion` a command group even while it has a single command
    pass


def _renamed(value, old_value, new: str, old: str, required: bool = False):
    """The value of an option renamed from ``old`` to ``new``; ``old`` stays as a hidden alias
    so that existing scripts keep working (it wins when given)."""
    if old_value is not None:
        if required and value is not None:
            raise CionError(f"give {new} once ({old} is its former name)")
        return old_value
    if required and value is None:
        raise CionError(f"missing option {new}")
    return value


def _device(value: str) -> Optional[str]:
    """``--device``: 'auto' -> None (the functions pick CUDA when available)."""
    return None if value == "auto" else value


#: ``show_default`` text of pre-training options whose default comes from the YAML recipe
_RECIPE = "from --config"


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
    img_size: str = typer.Option("128x64", "--img-size", help="Crop size HEIGHTxWIDTH."),
    bench_identities: int = typer.Option(200, help="People in the benchmark (output B), half train / half test."),
    switch_rate: float = typer.Option(0.05, help="Share of person-tracklet rows that are ID switches."),
    false_detection_rate: float = typer.Option(0.05, help="Share of rows that are false detections."),
    fragment_rate: float = typer.Option(0.25, help="Share of appearances split into several tracklets."),
    seed: int = typer.Option(0, help="Everything is a function of this seed."),
    workers: int = typer.Option(1, help="Worker processes rendering images (output is identical for any value)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", hidden=True),   # former name of --img-size
) -> None:
    """Generate the synthetic pedestrian world: noisy pre-training tracklets (A), a Market-1501
    layout benchmark with disjoint identities (B), and a contact sheet."""
    from cion.data.synth import WorldConfig, generate_world
    from cion.fileio import ensure_writable_dir

    cfg = WorldConfig(
        identities=identities, videos=videos, cameras=cameras,
        image_size=_parse_size(_renamed(img_size, image_size, "--img-size", "--image-size"), "--img-size"),
        bench_identities=bench_identities,
        switch_rate=switch_rate, false_detection_rate=false_detection_rate,
        fragment_rate=fragment_rate, seed=seed)
    ensure_writable_dir(out)
    summary = generate_world(out, cfg, workers=workers, progress=True)
    typer.echo(summary.describe())


@app.command()
def ingest(
    inputs: list[Path] = typer.Argument(..., help="Video files and/or folders of videos "
                                        "(searched recursively); with --merge: shard run folders."),
    out: Path = typer.Option(..., "--out", help="Output directory: crops, manifest.parquet, "
                             "ingest.json, contact_sheet.png; running again resumes."),
    detector: str = typer.Option("hog", "--detector", help="hog (OpenCV's built-in people "
                                 "detector) or onnx:WEIGHTS.onnx (a YOLO-style model)."),
    upscale: float = typer.Option(1.0, "--upscale", help="Resize frames by this factor before "
                                  "detection: HOG misses people under ~96 px, 2 finds ~48 px."),
    every: int = typer.Option(1, "--every", help="Process every N-th decoded frame."),
    min_height: int = typer.Option(64, "--min-height", help="Drop crops of person boxes shorter "
                                   "than this (pixels)."),
    min_length: int = typer.Option(4, "--min-length", help="Drop tracklets with fewer crops."),
    min_track_score: float = typer.Option(0.75, "--min-track-score", help="Drop tracklets whose "
                                          "mean detection score (0..1) is lower."),
    track_iou: float = typer.Option(0.3, "--track-iou", help="Least IoU between a box and a "
                                    "track's predicted box to continue the track (ByteTrack)."),
    max_per_tracklet: int = typer.Option(0, "--max-per-tracklet", help="Keep at most N crops per "
                                         "tracklet, evenly spaced (0: all)."),
    camera_from_name: bool = typer.Option(False, "--camera-from-name", help="Camera id from "
                                          "'c3' / 'cam3' / 'camera_3' in the video name."),
    workers: int = typer.Option(1, "--workers", help="Videos processed in parallel processes."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: process only shard K "
                                        "(0..N-1) of the sorted video list (default: RANK/WORLD_SIZE "
                                        "when set by torchrun, else all videos)."),
    merge: bool = typer.Option(False, "--merge", help="Join the manifests of shard runs (the "
                               "INPUTS folders) into --out/manifest.parquet."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="MOTChallenge ground truth folder "
                                      "(GT/<video stem>/gt/gt.txt): score the run (HOTA, IDF1, "
                                      "MOTA, purity, detection recall) into --out/scores.json; default: no scoring)."),
) -> None:
    """Videos -> person tracklets: detect (HOG / ONNX), track (ByteTrack), crop, and write a
    tracklet manifest that extract / denoise / pretrain take as is."""
    from cion.ingest import IngestOptions
    from cion.ingest import ingest as run_ingest
    from cion.ingest import merge as run_merge

    if merge:
        info = run_merge(inputs, out)
        typer.echo(f"merged {len(info['inputs'])} manifest(s): {info['videos']} videos, "
                   f"{info['tracklets']} tracklets, {info['crops']} crops -> {info['manifest']}")
        return
    options = IngestOptions(detector=detector, upscale=upscale, every=every, min_height=min_height,
                            min_length=min_length, min_track_score=min_track_score,
                            track_iou=track_iou,
                            max_per_tracklet=max_per_tracklet,
                            camera_from_name=camera_from_name)
    if gt is not None and not gt.is_dir():
        raise CionError(f"--gt {gt}: no such folder. Fix: give the folder holding "
                        "<video stem>/gt/gt.txt files")
    s = run_ingest(inputs, out, options, workers=workers, shard=shard, progress=True)
    typer.echo(f"{s['videos_ingested']} of {s['videos']} videos: {s['tracklets']} tracklets, "
               f"{s['crops']} crops, {s['frames_read']} frames in {s['seconds']:.1f}s -> "
               f"{s['manifest']}")
    if gt is not None:
        from cion.ingest.score import score_run

        scores = score_run(out, gt, summary=s["summary"])
        t = scores["total"]
        typer.echo(f"vs {gt}: HOTA {t['HOTA']:.3f}  IDF1 {t['IDF1']:.3f}  MOTA {t['MOTA']:.3f}  "
                   f"purity {t['purity']:.3f}  detection recall {t['detection_recall']:.3f}  "
                   f"-> {scores['path']}")
    for w in s["warnings"]:
        typer.echo(f"cion: warning: {w}", err=True)
    for f in s["failed"]:
        typer.echo(f"cion: error: {f['error']}", err=True)
    if s["failed"]:
        raise typer.Exit(2)


@app.command()
def denoise(
    data: Optional[Path] = typer.Option(None, "--data", help="Input tracklet manifest (Parquet).  [required]",
                                        show_default=False),
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
        "link with probability FALSE_LINKS / (2 * range). Values used go to OUT.stats.json.",
        show_default="off: --sigma-cst / --sigma-drm"),
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
    manifest: Optional[Path] = typer.Option(None, "--manifest", hidden=True),   # former name of --data
) -> None:
    """Progressive multi-level denoising: tracklets -> cross-video identities (paper Eq. 1-7)."""
    from cion.denoise.io import denoise_manifest, output_paths

    manifest = _renamed(data, manifest, "--data", "--manifest", required=True)
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
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs.", show_default=_RECIPE),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="GLOBAL batch size in images (all processes).",
                                             show_default=_RECIPE),
    local_crops: Optional[int] = typer.Option(None, "--local-crops", help="Local views per image.",
                                              show_default=_RECIPE),
    global_size: Optional[str] = typer.Option(None, "--global-size", help="Global view size HEIGHTxWIDTH "
                                              "(zoo recipes 256x128).", show_default=_RECIPE),
    local_size: Optional[str] = typer.Option(None, "--local-size", help="Local view size HEIGHTxWIDTH "
                                             "(zoo recipes 128x64).", show_default=_RECIPE),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every random choice.", show_default=_RECIPE),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps in total.",
                                            show_default="all epochs"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data-loader worker processes per training process.",
                                          show_default=_RECIPE),
    device: Optional[str] = typer.Option(None, "--device", help="Where it runs: auto (cuda if available) | cpu | "
                                         "cuda (under torchrun: one GPU per process).", show_default=_RECIPE),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | "
                                            "bf16 | fp16.", show_default=_RECIPE),
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
def zoo_list(family: Optional[str] = typer.Option(None, "--family", help="Only this family (e.g. vit).",
                                                   show_default="all"),
             show_all: bool = typer.Option(False, "--all", help="Also the micro models (resnet_micro, "
                                           "vit_micro: tests and the demo; not part of the 32).")) -> None:
    """One line per model: family, parameters, feature width, the authors' finetuned mAP."""
    from cion.models import list_models, model_info

    try:
        names = list_models(family, include_micro=show_all)
    except ValueError as err:
        raise CionError(str(err)) from None
    typer.echo(f"{'name':<18}{'family':<12}{'params(M)':>10}{'dim':>6}{'mAP Market/MSMT':>17}  reparam")
    for name in names:
        info = model_info(name)
        mAP = info["reported_mAP"]
        score = (f"{mAP['market1501']:>10.1f} / {mAP['msmt17']:<4.1f}" if mAP else
                 f"{'micro, not zoo':>15}  ")
        typer.echo(f"{name:<18}{info['family']:<12}{info['params'] / 1e6:>10.2f}{info['feature_dim']:>6}"
                   f"{score}  {'yes' if info['reparameterizable'] else ''}")


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
    from cion.models.factory import convert_official
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
    out: Optional[Path] = typer.Option(None, "--out", help="Output .onnx file.  [required]", show_default=False),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights: our .safetensors or the authors' .pth.",
                                              show_default="random init"),
    img_size: str = typer.Option("256x128", "--img-size", help="Input HEIGHTxWIDTH baked into the graph."),
    reparameterize: bool = typer.Option(True, "--reparameterize/--no-reparameterize",
                                        help="Fold RepViT/FastViT branches first (ignored for other families)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (VOLO needs >= 18)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with PyTorch outputs."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", hidden=True),   # former name of --out
) -> None:
    """Export a backbone to ONNX (dynamic batch) and check it with onnxruntime."""
    from cion.models import create_model, model_info
    from cion.models.export import export_onnx
    from cion.models.reparam import reparameterize as fold

    onnx = _renamed(out, onnx, "--out", "--onnx", required=True)
    from cion.fileio import ensure_writable_file

    size = _parse_size(img_size, "--img-size")
    ensure_writable_file(onnx, "--out")
    model = create_model(name, checkpoint=checkpoint).eval()
    if reparameterize and model_info(name)["reparameterizable"]:
        model = fold(model, inplace=True)
    report = export_onnx(model, onnx, img_size=size, opset=opset, check=check)
    typer.echo(report.describe())



@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output directory (created)."),
    quick: bool = typer.Option(False, "--quick", help="Small world, one seed, 80 steps: about 50 s on 2 cores "
                               "(a smoke test; its scores are no comparison)."),
    seed: int = typer.Option(0, help="Seed of the world and of the first pre-training run."),
    workers: int = typer.Option(2, help="Worker processes: pre-training runs in parallel (at most the CPU count)."),
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
                                              "(.safetensors or the authors' .pth).",
                                              show_default="random init"),
    img_size: Optional[str] = typer.Option(None, help="Input HEIGHTxWIDTH.",
                                           show_default="256x128; colour-hist 64x32"),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Average with the mirrored image."),
    dtype: str = typer.Option("float16", help="float16 or float32."),
    device: str = typer.Option("auto", help="Where it runs: auto (cuda if available) | cpu | cuda | cuda:N."),
    workers: int = typer.Option(0, help="Data-loader worker processes."),
    max_bad_share: float = typer.Option(0.01, "--max-bad-share", help="Unreadable images are "
                                        "skipped (left out of F.npy and its manifest) and listed in "
                                        "F.bad_images.txt; past this share of the images the run stops."),
) -> None:
    """Images -> L2-normalised features (.npy, manifest row order), batched, with progress."""
    from cion.extract import extract_to_files

    size = _parse_size(img_size, "--img-size") if img_size else None
    info = extract_to_files(data, model, out, checkpoint=checkpoint, img_size=size,
                            batch_size=batch_size, flip=flip, dtype=dtype, device=_device(device),
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
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder (or the table file).  [required]",
                                        show_default=False),
    rerank: bool = typer.Option(False, "--rerank/--no-rerank", help="Also k-reciprocal re-ranking."),
    out: Path = typer.Option(Path("cion_eval"), "--out", help="Folder for metrics.json and PNGs."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights for a ReIDZoo --model.",
                                              show_default="random init"),
    metric: str = typer.Option("cosine", help="cosine | euclidean | sqeuclidean."),
    k1: int = typer.Option(20, help="Re-ranking k1."),
    k2: int = typer.Option(6, help="Re-ranking k2."),
    lambda_value: float = typer.Option(0.3, "--lambda", help="Re-ranking weight of the original distance."),
    img_size: Optional[str] = typer.Option(None, help="Input HEIGHTxWIDTH.",
                                           show_default="256x128; colour-hist 64x32"),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Average with the mirrored image."),
    device: str = typer.Option("auto", help="Where it runs: auto (cuda if available) | cpu | cuda | cuda:N."),
    workers: int = typer.Option(0, help="Data-loader worker processes."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Ranked lists, t-SNE, CMC PNGs."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Leave unreadable query / "
                                         "gallery images out (listed in OUT/bad_images.txt) instead "
                                         "of stopping; the metrics then cover fewer images."),
    root: Optional[Path] = typer.Option(None, "--root", hidden=True),   # former name of --data
) -> None:
    """mAP / CMC / mINP of a model on a ReID benchmark: table, metrics.json and PNG figures."""
    from cion.evaluation.pipeline import evaluate_model, format_table

    root = _renamed(data, root, "--data", "--root", required=True)
    size = _parse_size(img_size, "--img-size") if img_size else None
    report = evaluate_model(model, dataset, root, checkpoint=checkpoint, out_dir=out, rerank=rerank,
                            k1=k1, k2=k2, lambda_value=lambda_value, metric=metric,
                            batch_size=batch_size, flip=flip, img_size=size, device=_device(device),
                            workers=workers, figures=figures, echo=typer.echo,
                            skip_bad_images=skip_bad_images)
    typer.echo(format_table(report))
    typer.echo(f"numbers -> {report['json']}")
    for f in report["figures"]:
        typer.echo(f"figure  -> {f}")


@app.command()
def finetune(
    data: Path = typer.Option(..., "--data", help="Dataset folder (or table file) with a train split "
                              "(Cluster Contrast modes: the target set, its labels unused)."),
    out: Path = typer.Option(..., "--out", help="Run directory; running again with the same --out resumes."),
    mode: Optional[str] = typer.Option(None, "--mode", help="supervised (BNNeck) | mgn | usl | uda "
                                       "(Cluster Contrast); default from --config, else supervised."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Backbone: a ReIDZoo name (cion zoo list) "
                                       "or a micro model (resnet_micro / vit_micro, cion zoo list --all); "
                                       "default from --config."),
    dataset: str = typer.Option("market1501", "--dataset", help="market1501 | msmt17 | folder "
                                "(train/ query/ gallery/ identity folders) | table (CSV/Parquet "
                                "with a split column)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Initial backbone: a "
                                              "backbone.safetensors (pre-training or fine-tuning) or "
                                              "the authors' .pth for a ReIDZoo arch; default random."),
    source_checkpoint: Optional[Path] = typer.Option(None, "--source-checkpoint", help="uda: the "
                                                     "backbone fine-tuned with labels on the source set "
                                                     "(required for uda; default: none)."),
    config: Optional[Path] = typer.Option(None, "--config", show_default="none: the mode's defaults", help="YAML recipe (configs/finetune/)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", show_default="none", help="KEY=VALUE overriding any recipe "
                                             "field (repeatable), e.g. --set eps=0.7."),
    steps: Optional[int] = typer.Option(None, "--steps", show_default="from the recipe (epochs)", help="Run length in optimiser steps "
                                        "(the recipe's schedule scaled onto them)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", show_default="from the recipe", help="GLOBAL batch (identities x --instances)."),
    instances: Optional[int] = typer.Option(None, "--instances", show_default="from the recipe", help="Images per identity (cluster) in a batch."),
    lr: Optional[float] = typer.Option(None, "--lr", show_default="from the recipe", help="Peak learning rate."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", show_default="from the recipe", help="Warm-up steps (with --steps)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", show_default="from the recipe", help="sgd | adam."),
    img_size: Optional[str] = typer.Option(None, "--img-size", show_default="from the recipe", help="Input HEIGHTxWIDTH for training and evaluation."),
    seed: Optional[int] = typer.Option(None, "--seed", show_default="from the recipe", help="Seed of the initialisation, batches and augmentation."),
    workers: Optional[int] = typer.Option(None, "--workers", show_default="from the recipe", help="Data-loader processes per training process."),
    device: Optional[str] = typer.Option(None, "--device", show_default="from the recipe: auto", help="auto | cpu | cuda | cuda:N."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Score query vs gallery "
                                  "(mAP / rank-1 / mINP) at the start, every eval_every epochs and at the end."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    max_bad_share: float = typer.Option(0.01, "--max-bad-share", help="Unreadable training images "
                                        "are replaced by another image of their identity (Cluster "
                                        "Contrast: made outliers) and listed in OUT/bad_images.txt; "
                                        "past this share of the images the run stops."),
) -> None:
    """Fine-tune a backbone as the paper did: supervised BNNeck, MGN, or Cluster Contrast (USL /
    UDA); resumable, DDP under torchrun, mixed precision. Writes OUT/backbone.safetensors,
    model.safetensors, best.safetensors, metrics.jsonl and finetune.json."""
    from cion import distributed
    from cion.finetune.cli_stage import build_config, format_summary
    from cion.finetune.trainer import finetune as run

    cfg = build_config(mode, arch, config, sets, steps=steps, warmup_steps=warmup_steps,
                       batch_size=batch_size, instances=instances, lr=lr, optimizer=optimizer,
                       img_size=list(_parse_size(img_size, "--img-size")) if img_size else None,
                       seed=seed, num_workers=workers, device=device)
    report = run(cfg, data, out, dataset=dataset, checkpoint=checkpoint,
                 source_checkpoint=source_checkpoint, evaluate=evaluate, progress=progress,
                 log=lambda msg: typer.echo(msg) if distributed.rank() == 0 else None,
                 max_bad_share=max_bad_share)
    if distributed.rank() == 0:
        typer.echo(format_summary(report))
    distributed.cleanup()


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
