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
  finetune  supervised (BNNeck, MGN) / unsupervised (Cluster Contrast) ReID training
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

    cfg = WorldConfig(
        identities=identities, videos=videos, cameras=cameras,
        image_size=_parse_size(image_size, "--image-size"), bench_identities=bench_identities,
        switch_rate=switch_rate, false_detection_rate=false_detection_rate,
        fragment_rate=fragment_rate, seed=seed)
    summary = generate_world(out, cfg, workers=workers, progress=True)
    typer.echo(summary.describe())


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
