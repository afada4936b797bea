"""Rendering and writing the synthetic world to disk.

Layout written by :func:`generate_world`::

    OUT/
      pretrain/manifest.parquet     A: noisy tracklets (+ true_identity, noise columns)
      pretrain/images/vVVV/tTTTTT_fFFFFF.jpg
      market/bounding_box_train/    B: Market-1501 layout and file names
      market/bounding_box_test/        (distractors 0000_*, junk -1_*)
      market/query/
      contact_sheet.png             B identities across cameras + A tracklets with their noise
      world.json                    configuration and counts

Every image is a pure function of the configuration and its index, so any number of worker
processes writes byte-identical files.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from cion.data.manifest import write_manifest
from cion.data.synth.camera import apply_camera, make_scene
from cion.data.synth.plan import BACKGROUND, PERSON, Shot, World, WorldConfig, plan_world
from cion.data.synth.render import draw_person
from cion.errors import CionError

SCENE_WIDTH_CROPS = 5  # a scene strip is this many crop widths wide


class _Renderer:
    """Renders shots of one world; caches scenes. One per process."""

    def __init__(self, world: World):
        self.world = world
        self.h, self.w = world.config.image_size
        self._scenes: dict[int, np.ndarray] = {}
        rng = np.random.default_rng([world.config.seed, 11])
        self.noise_bank = rng.standard_normal((2 * self.h, 2 * self.w, 3)).astype(np.float32)

    def scene(self, index: int) -> np.ndarray:
        if index not in self._scenes:
            look, seed = self.world.scenes[index]
            self._scenes[index] = make_scene(np.random.default_rng(seed), self.world.looks[look],
                                             self.h, self.w * SCENE_WIDTH_CROPS)
        return self._scenes[index]

    def render(self, shot: Shot, rng: np.random.Generator) -> Image.Image:
        h, w = self.h, self.w
        strip = self.scene(shot.scene)
        x0 = int(shot.scene_pos * (strip.shape[1] - w))
        canvas = Image.fromarray(strip[:, x0:x0 + w])
        draw = ImageDraw.Draw(canvas)
        look = self.world.looks[shot.look]
        if shot.kind != BACKGROUND:
            person = self.world.people[shot.person]
            height = h * 0.94 * shot.scale
            top = (h - height) / 2 + shot.dy * h
            draw_person(draw, person, shot.view, shot.phase, w / 2 + shot.dx * w, top, height)
            if shot.kind == PERSON and rng.random() < look.occlusion:
                _occlude(draw, rng, h, w)
        return apply_camera(canvas, look, rng, self.noise_bank, shot.brightness, shot.tint,
                            shot.detail)

    def write(self, shot: Shot, index: int, path: Path) -> None:
        rng = np.random.default_rng([self.world.config.seed, 13, index])
        image = self.render(shot, rng)
        image.save(path, "JPEG", quality=self.world.looks[shot.look].jpeg_quality)


def _occlude(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """Something in front of the person: a car/bench from below or a pole/passer-by at a side."""
    colour = tuple(int(c) for c in rng.integers(20, 200, 3))
    if rng.random() < 0.6:
        draw.rectangle([0, h * (1 - rng.uniform(0.15, 0.4)), w, h], fill=colour)
    else:
        width = w * rng.uniform(0.2, 0.35)
        x = 0 if rng.random() < 0.5 else w - width
        draw.rectangle([x, h * rng.uniform(0.0, 0.3), x + width, h], fill=colour)


_worker: _Renderer | None = None


def _init_worker(world: World) -> None:
    global _worker
    _worker = _Renderer(world)


def _render_chunk(args) -> int:
    jobs = args
    for index, shot, path in jobs:
        _worker.write(shot, index, Path(path))
    return len(jobs)


@dataclass
class WorldSummary:
    """What :func:`generate_world` wrote."""

    root: Path
    manifest: Path
    market: Path
    contact_sheet: Path
    stats: dict
    seconds: float

    def describe(self) -> str:
        a, b = self.stats["pretrain"], self.stats["benchmark"]
        n = a["images"] + b["train_images"] + b["query"] + b["gallery"] + b["distractors"] + b["junk"]
        return "\n".join([
            f"Synthetic pedestrian world written to {self.root} "
            f"({n} images in {self.seconds:.1f} s, {n / max(self.seconds, 1e-9):.0f} images/s)",
            f"  A  pre-training set  {self.manifest}",
            f"     {a['images']} images, {a['tracklets']} tracklets, {a['videos']} videos, "
            f"{a['identities']} identities ({a['cross_video_identities']} in several videos)",
            f"     noise: {a['switch_rows']} ID-switch rows, {a['false_detection_rows']} false "
            f"detections, {a['fragmented_appearances']} fragmented appearances "
            f"(+{a['extra_tracklets_from_fragmentation']} tracklets)",
            f"  B  benchmark (Market-1501 layout)  {self.market}",
            f"     train {b['train_images']} images / {b['train_identities']} ids, query "
            f"{b['query']}, gallery {b['gallery']} + {b['distractors']} distractors (0000) + "
            f"{b['junk']} junk (-1), {b['test_identities']} test ids",
            f"  contact sheet  {self.contact_sheet}",
        ])


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".cion_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CionError(f"cannot write to --out {out}: {err.strerror or err}; choose a writable "
                        "directory") from None


def generate_world(out: str | os.PathLike, config: WorldConfig = WorldConfig(), *,
                   workers: int = 1, progress: bool = True) -> WorldSummary:
    """Plan, render and write the world to ``out`` (see the module docstring for the layout).

    Args:
        out: output directory, created if needed.
        config: the world; equal configs give identical files.
        workers: rendering processes (the files do not depend on it).
        progress: show a progress bar.
    """
    start = time.perf_counter()
    out = Path(out)
    _check_writable(out)
    if workers < 1:
        raise CionError(f"--workers must be at least 1 (got {workers})")
    world = plan_world(config)
    pre, market = out / "pretrain", out / "market"
    jobs = [(i, s, str(pre / p)) for i, (s, p) in
            enumerate(zip(world.pretrain_shots, world.pretrain_rows["path"]))]
    offset = len(jobs)
    jobs += [(offset + i, s, str(market / p)) for i, (s, p) in
             enumerate(zip(world.bench_shots, world.bench_files))]
    for folder in {os.path.dirname(p) for _, _, p in jobs}:
        os.makedirs(folder, exist_ok=True)

    _render_all(world, jobs, workers, progress)

    manifest = write_manifest(pd.DataFrame(world.pretrain_rows), pre / "manifest.parquet")
    sheet = write_contact_sheet(world, out)
    seconds = time.perf_counter() - start
    summary = WorldSummary(out, manifest, market, sheet, world.stats, seconds)
    info = {"config": asdict(config), "stats": world.stats, "seconds": round(seconds, 3)}
    (out / "world.json").write_text(json.dumps(info, indent=2))
    return summary


def _render_all(world: World, jobs: list, workers: int, progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=not progress, transient=True)
    chunk = 256
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    with bar:
        task = bar.add_task("render", total=len(jobs))
        if workers == 1:
            _init_worker(world)
            for c in chunks:
                bar.advance(task, _render_chunk(c))
        else:
            with get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(world,)) as pool:
                for done in pool.imap_unordered(_render_chunk, chunks):
                    bar.advance(task, done)


def write_contact_sheet(world: World, out: Path, n_people: int = 6, per_person: int = 8,
                        n_tracklets: int = 4) -> Path:
    """A PNG: benchmark identities across cameras and viewpoints (top), and pre-training
    tracklets with their noise outlined (bottom: red = ID switch, orange = false detection)."""
    h, w = world.config.image_size
    zoom = max(1, 128 // h)
    cw, ch, pad, label = w * zoom, h * zoom, 4, 16
    market = out / "market"
    by_pid: dict[str, list[str]] = {}
    for rel in world.bench_files:
        folder, name = rel.split("/")
        pid = name.split("_")[0]
        if folder != "bounding_box_train" and pid not in ("0000", "-1"):
            by_pid.setdefault(pid, []).append(rel)
    people = [p for p in sorted(by_pid) if len({r.split("_c")[1][0] for r in by_pid[p]}) >= 3][:n_people]

    rows = world.pretrain_rows
    tracklet = np.asarray(rows["tracklet"])
    noisy = sorted({int(t) for t, n in zip(rows["tracklet"], rows["noise"]) if n != "none"})[:n_tracklets]

    n_rows = len(people) + len(noisy)
    sheet = Image.new("RGB", (label * 8 + per_person * (cw + pad), 2 * label + n_rows * (ch + pad + label)),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), "benchmark identities across cameras (top) / pre-training tracklets with noise "
              "(red: ID switch, orange: false detection)", fill=(0, 0, 0))
    y = 2 * label
    for pid in people:
        files = sorted(by_pid[pid], key=lambda r: r.split("_c")[1])
        picks = [files[int(round(k))] for k in np.linspace(0, len(files) - 1, min(per_person, len(files)))]
        draw.text((4, y + ch // 2), f"id {pid}", fill=(0, 0, 0))
        for k, rel in enumerate(picks):
            img = Image.open(market / rel).convert("RGB").resize((cw, ch), Image.NEAREST)
            x = label * 8 + k * (cw + pad)
            sheet.paste(img, (x, y))
            draw.text((x, y + ch), "c" + rel.split("_c")[1][0], fill=(0, 0, 0))
        y += ch + pad + label
    for t in noisy:
        idx = np.flatnonzero(tracklet == t)[:per_person]
        draw.text((4, y + ch // 2), f"tracklet {t}", fill=(0, 0, 0))
        for k, i in enumerate(idx):
            img = Image.open(out / "pretrain" / rows["path"][i]).convert("RGB").resize((cw, ch), Image.NEAREST)
            x = label * 8 + k * (cw + pad)
            sheet.paste(img, (x, y))
            colour = {"switch": (220, 0, 0), "false_detection": (255, 140, 0)}.get(rows["noise"][i])
            if colour:
                draw.rectangle([x - 2, y - 2, x + cw + 1, y + ch + 1], outline=colour, width=3)
        y += ch + pad + label
    path = out / "contact_sheet.png"
    sheet.save(path)
    return path


