"""Synthetic street videos with ground truth, to score video ingestion (detector + tracker).

Each video is one camera (its own look and background) that watches a few walkers cross: from the
side (side views) or towards / away from the camera (front / back views, growing or shrinking
with perspective). Walkers hide each other (nearer ones are drawn last) and some videos have a
foreground pole or a low wall in front of the street. People come from one pool shared by all
videos, so the same person appears in several videos, as in CION's crawled videos.

Layout written by :func:`generate_videos`::

    OUT/videos/vVVV_cC.avi            MJPEG, 8-bit BGR; camera C is in the name (--camera-from-name)
    OUT/gt/vVVV_cC/gt/gt.txt          MOTChallenge ground truth, one line per person and frame
    OUT/gt/vVVV_cC/seqinfo.ini        MOTChallenge sequence info
    OUT/videos.json                   configuration, walkers per video

``gt.txt`` lines are ``frame, id, left, top, width, height, conf, class, visibility`` with frame
1-based (= decode counter + 1) and id = pool identity + 1, so ids agree across videos. The box is
the person's whole silhouette (also where hidden), clipped to the frame. A person drawn mostly
hidden (visibility < 0.5) or cut by the frame edge is written as class 8 (distractor) with conf
0: scoring neither demands nor penalises boxes on them, as MOTChallenge does for hard cases.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cion.data.synth.appearance import Person, sample_people
from cion.data.synth.camera import apply_camera, make_scene, sample_look, soften_look
from cion.data.synth.render import draw_person
from cion.errors import CionError
from cion.fileio import atomic_write


@dataclass(frozen=True)
class VideoConfig:
    """Everything that determines a set of synthetic videos (equal configs, equal videos)."""

    videos: int = 4                 #: number of videos
    frames: int = 60                #: frames per video
    size: tuple = (288, 384)        #: frame (height, width) in pixels
    fps: float = 10.0               #: frame rate written in the file
    people: int = 8                 #: identities in the pool shared by all videos
    walkers: tuple = (2, 4)         #: walkers per video (min, max), each a different person
    person_height: tuple = (0.42, 0.62)  #: walker height as a share of the frame height (far, near)
    occluder_rate: float = 0.5      #: share of videos with a foreground pole or low wall
    cameras: int = 3                #: cameras (looks); video v is filmed by camera v % cameras
    look_strength: float = 0.5      #: how far camera looks are from neutral (see soften_look)
    seed: int = 0

    def check(self) -> None:
        h, w = self.size
        rules = [
            (self.videos >= 1, f"videos must be at least 1 (got {self.videos})"),
            (self.frames >= 2, f"frames must be at least 2 (got {self.frames})"),
            (h >= 64 and w >= 64, f"size {h}x{w} is too small (at least 64x64)"),
            (1 <= self.walkers[0] <= self.walkers[1], "walkers must be (min, max), 1 <= min <= max"),
            (self.walkers[1] <= self.people, f"walkers max {self.walkers[1]} exceeds people {self.people}"),
            (0.1 <= self.person_height[0] <= self.person_height[1] <= 0.9,
             "person_height must be (far, near) with 0.1 <= far <= near <= 0.9"),
            (self.cameras >= 1, "cameras must be at least 1"),
        ]
        for ok, message in rules:
            if not ok:
                raise CionError(f"synthetic videos: {message}")


@dataclass(frozen=True)
class Walker:
    """One person's walk through one video: feet position moves linearly in time."""

    identity: int      # index into the people pool
    t0: float          # frame at which the feet are at (x0, y0)
    x0: float          # feet x, pixels
    y0: float          # feet y, pixels (floor row)
    vx: float          # pixels per frame
    vy: float          # pixels per frame (towards the camera > 0)
    phase0: float      # walking phase at t0, radians

    def feet(self, t: float) -> tuple[float, float]:
        return self.x0 + self.vx * (t - self.t0), self.y0 + self.vy * (t - self.t0)

    def view(self) -> str:
        if abs(self.vx) >= 1.5 * abs(self.vy):
            return "right" if self.vx > 0 else "left"
        return "front" if self.vy > 0 else "back"


def _height_at(y: float, horizon: float, frame_h: int, near: float) -> float:
    """Person height (pixels) of feet at row ``y``: linear perspective, ``near`` * H at the bottom."""
    return near * frame_h * (y - horizon) / (frame_h - horizon)


def plan_walkers(rng: np.random.Generator, cfg: VideoConfig, horizon: float) -> list[Walker]:
    """Walkers of one video: distinct identities, entering at random times, most cross sideways."""
    h, w = cfg.size
    far, near = cfg.person_height
    y_far = horizon + far / near * (h - horizon)     # feet row of the smallest person
    n = int(rng.integers(cfg.walkers[0], cfg.walkers[1] + 1))
    ids = rng.choice(cfg.people, size=n, replace=False)
    walkers = []
    for identity in ids:
        y = rng.uniform(y_far, h - 3)
        height = _height_at(y, horizon, h, near)
        if rng.random() < 0.75:      # crossing sideways: in at one edge, out at the other
            direction = rng.choice([-1.0, 1.0])
            speed = rng.uniform(0.06, 0.1) * height       # ~ a step of 1.3 m/s at 10 fps
            span = w + height * 0.6
            t_cross = span / speed
            t_in = rng.uniform(-0.4 * t_cross, max(1.0, cfg.frames - 0.6 * t_cross))
            x_in = -0.3 * height if direction > 0 else w + 0.3 * height
            walkers.append(Walker(int(identity), float(t_in), float(x_in), float(y),
                                  float(direction * speed), 0.0, float(rng.uniform(0, 2 * np.pi))))
        else:                        # towards or away from the camera, drifting a little
            vy = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
            x = rng.uniform(0.2 * w, 0.8 * w)
            walkers.append(Walker(int(identity), float(cfg.frames / 2), float(x),
                                  float(y if vy < 0 else y_far + 0.3 * (y - y_far)),
                                  float(rng.uniform(-0.5, 0.5)), float(vy),
                                  float(rng.uniform(0, 2 * np.pi))))
    return walkers


def _occluders(rng: np.random.Generator, cfg: VideoConfig) -> list[tuple[tuple, tuple]]:
    """Foreground objects as (rectangle x0 y0 x1 y1, colour): a pole or a low wall."""
    h, w = cfg.size
    if rng.random() >= cfg.occluder_rate:
        return []
    colour = tuple(int(c) for c in rng.integers(40, 160, 3))
    if rng.random() < 0.5:
        pw = rng.uniform(0.03, 0.06) * w
        x = rng.uniform(0.25 * w, 0.75 * w)
        return [((x, 0.0, x + pw, float(h)), colour)]
    top = h - rng.uniform(0.12, 0.22) * h
    x0 = rng.uniform(0, 0.5 * w)
    return [((x0, top, x0 + rng.uniform(0.2, 0.45) * w, float(h)), colour)]


def render_video(cfg: VideoConfig, index: int, people: list[Person], path: Path) -> tuple[list, dict]:
    """Render video ``index`` to ``path`` (MJPEG .avi); return its ground-truth rows
    ``(frame 1-based, id, left, top, width, height, conf, class, visibility)`` and its plan."""
    import cv2

    h, w = cfg.size
    rng = np.random.default_rng([cfg.seed, 101, index])
    camera = index % cfg.cameras
    look_rng = np.random.default_rng([cfg.seed, 102, camera])
    look = soften_look(sample_look(look_rng), cfg.look_strength)
    look = replace(look, blur=look.blur * 0.4, occlusion=0.0)  # blur was sized for 128 px crops
    horizon = float(h * rng.uniform(0.3, 0.45))
    background = make_scene(rng, look, h, w)
    walkers = plan_walkers(rng, cfg, horizon)
    occluders = _occluders(rng, cfg)
    occ_mask = np.zeros((h, w), bool)
    for (x0, y0, x1, y1), _ in occluders:
        occ_mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    noise_bank = rng.standard_normal((h + 8, w + 8, 3)).astype(np.float32)
    near = cfg.person_height[1]

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), cfg.fps, (w, h))
    if not writer.isOpened():
        raise CionError(f"{path}: OpenCV cannot write MJPEG video here. Fix: install "
                        "opencv-python-headless==4.14.0.94")
    rows = []
    try:
        for t in range(cfg.frames):
            canvas = Image.fromarray(background).convert("RGBA")
            drawn = []                                           # (walker, mask, nominal box)
            order = sorted(walkers, key=lambda wk: wk.feet(t)[1])   # far (small y) first
            for wk in order:
                fx, fy = wk.feet(t)
                height = _height_at(fy, horizon, h, near)
                if height < 8 or fx < -height or fx > w + height:
                    continue
                layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
                phase = wk.phase0 + 0.12 * np.hypot(wk.vx, wk.vy) * (t - wk.t0) / max(height, 1) * 2 * np.pi
                draw_person(ImageDraw.Draw(layer), people[wk.identity], wk.view(), float(phase),
                            fx, fy - height, height)
                mask = np.asarray(layer.getchannel("A")) > 0
                if not mask.any():
                    continue
                canvas.alpha_composite(layer)
                drawn.append((wk, mask, (fx - 0.3 * height, fy - height, fx + 0.3 * height, fy)))
            if occluders:
                d = ImageDraw.Draw(canvas)
                for rect, colour in occluders:
                    d.rectangle(rect, fill=colour + (255,))
            # visibility: own pixels not covered by nearer walkers or foreground objects
            cover = occ_mask.copy()
            for wk, mask, nominal in reversed(drawn):
                visible = float((mask & ~cover).sum()) / float(mask.sum())
                cover |= mask
                ys, xs = np.nonzero(mask)
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                inside = nominal[0] >= 0 and nominal[1] >= 0 and nominal[2] <= w and nominal[3] <= h
                hard = visible < 0.5 or not inside
                rows.append((t + 1, wk.identity + 1, int(x1), int(y1), int(x2 - x1), int(y2 - y1),
                             0 if hard else 1, 8 if hard else 1, round(visible, 3)))
            image = apply_camera(canvas.convert("RGB"), look, rng, noise_bank)
            writer.write(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
    finally:
        writer.release()
    rows.sort()
    plan = {"camera": camera, "horizon": horizon, "occluders": [list(r) for r, _ in occluders],
            "walkers": [asdict(wk) | {"view": wk.view()} for wk in walkers]}
    return rows, plan


def video_name(cfg: VideoConfig, index: int) -> str:
    return f"v{index:03d}_c{index % cfg.cameras + 1}"


def generate_videos(out: str | Path, cfg: VideoConfig = VideoConfig()) -> dict:
    """Write ``cfg.videos`` synthetic videos with MOTChallenge ground truth under ``out``.

    Returns the content of ``out/videos.json`` (config, and per video its camera and walkers).
    """
    cfg.check()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    people = sample_people(np.random.default_rng([cfg.seed, 100]), cfg.people)
    summary = {"config": asdict(cfg), "videos": {}}
    for index in range(cfg.videos):
        name = video_name(cfg, index)
        rows, plan = render_video(cfg, index, people, out / "videos" / f"{name}.avi")
        seq = out / "gt" / name
        (seq / "gt").mkdir(parents=True, exist_ok=True)
        text = "".join(",".join(str(v) for v in row) + "\n" for row in rows)
        atomic_write(seq / "gt" / "gt.txt", lambda p, text=text: Path(p).write_text(text))
        h, w = cfg.size
        (seq / "seqinfo.ini").write_text(
            f"[Sequence]\nname={name}\nimDir=img1\nframeRate={cfg.fps:g}\nseqLength={cfg.frames}\n"
            f"imWidth={w}\nimHeight={h}\nimExt=.jpg\n")
        summary["videos"][name] = plan
    atomic_write(out / "videos.json", lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
    return summary
