"""The ``cion finetune`` command as importable functions: the recipe from a mode, an optional
YAML file, the named options and ``--set key=value`` pairs (:func:`build_config`), and the
summary printed at the end (:func:`format_summary`). Training itself is
:func:`cion.finetune.trainer.finetune`.

    from cion.finetune.cli_stage import build_config, format_summary
    from cion.finetune.trainer import finetune
    cfg = build_config("usl", "resnet50_ibn", "configs/finetune/usl_market1501.yaml", ["eps=0.5"])
    print(format_summary(finetune(cfg, "data/market1501", "runs/usl", checkpoint="cion.safetensors")))
"""
from __future__ import annotations

from pathlib import Path

from cion.errors import CionError
from cion.finetune.config import MODE_DEFAULTS, MODES, FinetuneConfig, parse_overrides


def build_config(mode: str | None, arch: str | None, config: str | Path | None = None,
                 sets: list[str] | None = None, *, steps: int | None = None,
                 warmup_steps: int | None = None, **named) -> FinetuneConfig:
    """Recipe = the mode's defaults < the YAML ``config`` < ``named`` options (None: not given)
    < ``sets`` (``key=value``). ``steps`` (the former ``--steps``) makes the run that many
    optimiser steps long, the schedule scaled onto them; ``warmup_steps`` is then the warm-up."""
    overrides = parse_overrides(sets)
    recipe: dict = {}
    if config is not None:
        recipe = FinetuneConfig.load(config).to_dict()     # validates the file on its own
        recipe = {k: v for k, v in recipe.items()
                  if k in _given_keys(config)}              # only what the file sets
    mode = overrides.get("mode") or mode or recipe.get("mode") or "supervised"
    if mode not in MODES:
        raise CionError(f"--mode {mode}: choose one of {', '.join(MODES)}")
    data = dict(MODE_DEFAULTS[mode])
    data.update(recipe)
    data["mode"] = mode
    if arch is not None:
        data["arch"] = arch
    data.update({k: v for k, v in named.items() if v is not None})
    if steps is not None:
        data["steps"] = steps
    if warmup_steps is not None:
        total = overrides.get("steps", data.get("steps"))
        if total is None:
            raise CionError("--warmup-steps needs --steps (a run measured in steps); for a run "
                            "in epochs use --set warmup_epochs=E")
        epochs = overrides.get("epochs", data.get("epochs", FinetuneConfig.epochs))
        data["warmup_epochs"] = float(warmup_steps) / float(total) * float(epochs)
    data.update(overrides)
    return FinetuneConfig.from_dict(data, str(config) if config else "options")


def _given_keys(path) -> set:
    import yaml

    return set((yaml.safe_load(Path(path).read_text()) or {}).keys())


def _line(s: dict) -> str:
    return f"{100 * s['mAP']:>7.2f}%{100 * s['rank1']:>9.2f}%{100 * s['mINP']:>8.2f}%"


def format_summary(report: dict) -> str:
    """A short plain-text summary of a fine-tuning report (percent)."""
    what = (f"{report['num_images']} images" + ("" if report["mode"] in ("usl", "uda")
                                                 else f" of {report['num_identities']} identities"))
    lines = [f"{report['arch']} fine-tuned ({report['mode']}) on {report['dataset']} "
             f"{report.get('version', '')}".rstrip() + f": {what}, {report['steps']} steps, "
             f"{report['epochs']} epochs, {report['seconds']['total']:.1f}s"]
    if report.get("clusters"):
        c = report["clusters"][-1]
        lines.append(f"last clustering: {c['clusters']} clusters, {c['outliers']} outliers")
    scores = report.get("scores")
    if scores:
        lines += [f"{'':<8}{'mAP':>8}{'Rank-1':>10}{'mINP':>9}", "-" * 35]
        for key in ("start", "end", "best"):
            if scores.get(key):
                lines.append(f"{key:<8}{_line(scores[key])}")
    if report.get("backbone"):
        lines.append(f"backbone -> {report['backbone']}")
    lines.append(f"model    -> {report['model']}")
    lines.append(f"numbers  -> {report['json']}")
    if report.get("backbone"):
        lines.append(f"evaluate the backbone again: {evaluate_hint(report)}")
    return "\n".join(lines)


def evaluate_hint(report: dict) -> str:
    h, w = report["img_size"]
    return (f"cion evaluate --model {report['backbone']} --dataset {report['reader']} "
            f"--data {report['data']} --img-size {h}x{w}")
