"""Planning the synthetic world: who appears where, and which frames are noise.

Planning is cheap and sequential (one random stream per output); rendering is the costly part
and is driven by the :class:`Shot` records made here, each of which fully determines one image.

Output A (pre-training set, internet-video stand-in): every identity appears in a few videos,
preferably filmed by different cameras; within a video an appearance is one walking track.
Tracking noise with ground truth:

* fragmentation: a track split into 2-3 tracklets (with a few frames lost at each cut);
* ID switch: a contiguous run of a tracklet's frames shows another person of the same video;
* false detection: a short run of frames shows background or a partial body crop.

A track is not one view of one pose: the walker may turn (the viewpoint changes once or twice,
e.g. front -> side -> back as someone passes the camera), walks from sun into shade or back (the
brightness and the colour temperature ramp over the track: shade is darker and bluer) and comes
closer or goes away (the detail ramps: a far person is a blurrier crop). These are what frames
of one person give that augmented copies of one image do not. They are drawn from their own
random stream, so switching them off (``turn_rate=0, light_ramp=0, tint_ramp=0,
detail_ramp=0``) gives the same people, videos and noise.

Noise never takes half a tracklet, so each tracklet has a well-defined main identity.

Output B (benchmark): Market-1501 protocol with identities disjoint from A.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cion.data.synth.appearance import Person, sample_people
from cion.data.synth.camera import CameraLook, sample_look, sample_view, soften_look
from cion.errors import CionError

PERSON, BACKGROUND, PARTIAL = 0, 1, 2


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world. Equal configs give byte-identical worlds."""

    identities: int = 300            #: people in the pre-training set (A)
    videos: int = 80                 #: videos in A
    cameras: int = 6                 #: cameras (each with its own look), at most 9 (Market naming)
    image_size: tuple = (128, 64)    #: crop (height, width) in pixels
    bench_identities: int = 200      #: people in the benchmark (B), half train / half test
    switch_rate: float = 0.05        #: share of A's rows that are ID switches
    false_detection_rate: float = 0.05  #: share of A's rows that are false detections
    fragment_rate: float = 0.25      #: share of A's appearances split into several tracklets
    appearances_per_identity: float = 3.0  #: mean number of videos an A identity appears in
    frames_per_appearance: tuple = (10, 24)  #: frames of one track (min, max)
    turn_rate: float = 0.5           #: share of A's tracks in which the walker turns (new view)
    light_ramp: float = 0.25         #: brightness over a track ramps between 1 -/+ this
    tint_ramp: float = 0.15          #: colour temperature ramps between log(R/G) = -/+ this
    detail_ramp: float = 0.5         #: detail (effective resolution) ramps between 1 - this and 1
    look_strength: float = 1.0       #: how far cameras are from neutral (1: full, 0: identical)
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`CionError` with the offending option and its valid range."""
        rules = [
            (self.identities >= 2, f"--identities must be at least 2 (got {self.identities})"),
            (self.videos >= 1, f"--videos must be at least 1 (got {self.videos})"),
            (2 <= self.cameras <= 9, f"--cameras must be between 2 and 9, the range Market-1501 "
             f"file names can hold (got {self.cameras})"),
            (self.bench_identities >= 4, f"--bench-identities must be at least 4 (got "
             f"{self.bench_identities})"),
            (0 <= self.switch_rate <= 0.25, f"--switch-rate must be in [0, 0.25] (got {self.switch_rate})"),
            (0 <= self.false_detection_rate <= 0.25, f"--false-detection-rate must be in [0, 0.25] "
             f"(got {self.false_detection_rate})"),
            (0 <= self.fragment_rate <= 1, f"--fragment-rate must be in [0, 1] (got {self.fragment_rate})"),
            (self.appearances_per_identity >= 1, "appearances_per_identity must be at least 1"),
            (4 <= self.frames_per_appearance[0] <= self.frames_per_appearance[1],
             "frames_per_appearance must be (min, max) with 4 <= min <= max"),
            (0 <= self.turn_rate <= 1, f"turn_rate must be in [0, 1] (got {self.turn_rate})"),
            (0 <= self.light_ramp <= 0.5, f"light_ramp must be in [0, 0.5] (got {self.light_ramp})"),
            (0 <= self.tint_ramp <= 0.5, f"tint_ramp must be in [0, 0.5] (got {self.tint_ramp})"),
            (0 <= self.detail_ramp <= 0.8, f"detail_ramp must be in [0, 0.8] (got {self.detail_ramp})"),
            (0 <= self.look_strength <= 1, f"look_strength must be in [0, 1] (got {self.look_strength})"),
        ]
        h, w = self.image_size
        rules.append((h >= 16 and w >= 8 and h <= 1024 and w <= 512,
                      f"--img-size {h}x{w} is out of range (16x8 .. 1024x512)"))
        for ok, message in rules:
            if not ok:
                raise CionError(message)


@dataclass(frozen=True)
class Shot:
    """Everything needed to render one image (besides per-image sensor noise)."""

    kind: int            # PERSON, BACKGROUND or PARTIAL
    person: int          # index into World.people (-1 for BACKGROUND)
    look: int            # index into World.looks
    scene: int           # index into World.scenes
    scene_pos: float     # 0..1, where along the scene strip the crop is
    view: str
    phase: float         # walking phase, radians
    scale: float         # person height / crop height
    dx: float            # horizontal offset, fraction of crop width
    dy: float            # vertical offset, fraction of crop height
    brightness: float
    tint: tuple = (1.0, 1.0, 1.0)   # per-channel light colour (RGB gains)
    detail: float = 1.0              # share of the camera's resolution (distance to the camera)


@dataclass
class World:
    """A planned world: people, cameras, scenes, and the shots of both outputs."""

    config: WorldConfig
    people: list[Person]
    looks: list[CameraLook]
    scenes: list[tuple[int, int]]            # (look index, scene seed)
    pretrain_rows: dict[str, list] = field(default_factory=dict)   # manifest columns of A
    pretrain_shots: list[Shot] = field(default_factory=list)
    bench_files: list[str] = field(default_factory=list)           # relative to market/
    bench_shots: list[Shot] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Light:
    """The conditions of one frame of a track: brightness factor, RGB tint, detail."""

    brightness: float = 1.0
    tint: tuple = (1.0, 1.0, 1.0)
    detail: float = 1.0


def _shot(rng, kind, person, look, scene, pos, view, phase, scale, light: Light = Light()) -> Shot:
    """Add detector-like crop jitter to a clean shot taken under ``light``."""
    return Shot(kind, person, look, scene, float(np.clip(pos, 0, 1)), view, float(phase),
                float(scale * rng.uniform(0.93, 1.07)), float(rng.normal(0, 0.04)),
                float(rng.normal(0, 0.025)), float(light.brightness * rng.uniform(0.92, 1.08)),
                light.tint, light.detail)


#: viewpoints a walker reaches by turning a quarter (front/back <-> left/right)
_QUARTER_TURNS = {"front": ("left", "right"), "back": ("left", "right"),
                  "left": ("front", "back"), "right": ("front", "back")}


def _walk(rng, n: int, first_view: str, cfg: WorldConfig) -> tuple[list[str], list[Light]]:
    """Per-frame viewpoints and light of one track of ``n`` frames.

    With probability ``cfg.turn_rate`` the walker turns a quarter once (at a random frame in
    the middle half of the track), and a third of those turns a second quarter, e.g. front ->
    left -> back. Brightness, colour temperature and detail each ramp linearly between two
    values drawn for the track's ends: brightness in [1 -/+ light_ramp], log(R/G) = -log(B/G)
    in [-/+ tint_ramp] (warm sun, blue shade), detail in [1 - detail_ramp, 1].
    Returns (views, lights), n of each.
    """
    views = [first_view] * n
    if rng.random() < cfg.turn_rate and n >= 4:
        turns = 2 if rng.random() < 1 / 3 and n >= 8 else 1
        cuts = np.sort(rng.choice(np.arange(n // 4, n - n // 4 + 1), size=turns, replace=False))
        view = first_view
        for cut in cuts:
            view = str(rng.choice(_QUARTER_TURNS[view]))
            views[int(cut):] = [view] * (n - int(cut))
    ramp = np.linspace(0.0, 1.0, n)[:, None]
    ends = np.stack([rng.uniform(1 - cfg.light_ramp, 1 + cfg.light_ramp, 2),
                     rng.uniform(-cfg.tint_ramp, cfg.tint_ramp, 2),
                     rng.uniform(1 - cfg.detail_ramp, 1.0, 2)], axis=1)        # (2, 3)
    frames = ends[0] + (ends[1] - ends[0]) * ramp                                 # (n, 3)
    lights = [Light(float(b), tuple(float(g) for g in np.exp([t, 0.0, -t])), float(d))
              for b, t, d in frames]
    return views, lights


def _noise_shot(rng, world: World, look: int, scene: int, members: list[int]) -> Shot:
    """A false detection: background only, or a partial crop of someone in the video."""
    if rng.random() < 0.5:
        return Shot(BACKGROUND, -1, look, scene, float(rng.random()), "front", 0.0, 1.0, 0.0, 0.0,
                    float(rng.uniform(0.9, 1.1)))
    return Shot(PARTIAL, int(rng.choice(members)), look, scene, float(rng.random()),
                sample_view(rng, world.looks[look]), float(rng.uniform(0, 2 * math.pi)),
                float(rng.uniform(1.7, 2.6)), float(rng.normal(0, 0.25)),
                float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.6)), float(rng.uniform(0.9, 1.1)))


def _assign_videos(rng, cfg: WorldConfig, video_cam: np.ndarray) -> list[list[int]]:
    """Which identities appear in which video (each identity in ~appearances_per_identity
    videos, preferring cameras it has not been seen by; every video holds at least 2 people)."""
    V = cfg.videos
    members: list[list[int]] = [[] for _ in range(V)]
    for i in range(cfg.identities):
        n = int(min(V, 1 + rng.poisson(cfg.appearances_per_identity - 1)))
        order = rng.permutation(V)
        chosen, cams = [], set()
        for v in order:
            if len(chosen) == n:
                break
            if video_cam[v] not in cams:
                chosen.append(int(v))
                cams.add(video_cam[v])
        for v in order:
            if len(chosen) == n:
                break
            if v not in chosen:
                chosen.append(int(v))
        for v in chosen:
            members[v].append(i)
    for v in range(V):
        while len(members[v]) < 2:
            i = int(rng.integers(cfg.identities))
            if i not in members[v]:
                members[v].append(i)
        members[v].sort()
    return members


def _split_track(rng, n_frames: int, fragment: bool) -> list[tuple[int, int]]:
    """Cut a track of n_frames into pieces [(begin, end), ...] losing 2-4 frames at each cut."""
    if not fragment:
        return [(0, n_frames)]
    pieces = 3 if n_frames >= 20 and rng.random() < 0.3 else 2
    out, begin = [], 0
    for k in range(pieces - 1):
        rest = pieces - k - 1
        lo, hi = begin + 3, n_frames - rest * 7
        cut = int(rng.integers(lo, max(lo, hi) + 1))
        out.append((begin, cut))
        begin = cut + int(rng.integers(2, 5))
    out.append((begin, n_frames))
    return out


def plan_pretrain(world: World, rng: np.random.Generator, first_look: int) -> None:
    """Fill ``world.pretrain_rows`` / ``pretrain_shots`` / ``stats['pretrain']`` for output A:
    who is in which video, their walking tracks cut into tracklets, then the tracking noise."""
    cfg = world.config
    V, C = cfg.videos, cfg.cameras
    video_cam = rng.permutation(np.arange(V) % C)
    members = _assign_videos(rng, cfg, video_cam)
    n_apps = sum(len(m) for m in members)
    fragmented = set(rng.choice(n_apps, size=int(round(cfg.fragment_rate * n_apps)), replace=False).tolist())
    tracklets, views_in_video = _plan_tracklets(world, rng, first_look, video_cam, members, fragmented)
    tracks = _Tracklets.of(tracklets)
    n_rows = sum(len(s) for s in tracks.shots)
    budget_switch = int(round(cfg.switch_rate * n_rows))
    budget_fd = int(round(cfg.false_detection_rate * n_rows))
    left = (_inject_noise(world, rng, tracks, members, views_in_video, budget_switch, "switch")
            + _inject_noise(world, rng, tracks, members, views_in_video, budget_fd, "false_detection"))
    if left:
        raise CionError("the requested noise rates do not fit in the tracklets "
                        "(noise never takes half a tracklet): lower --switch-rate / "
                        "--false-detection-rate or raise the frames per appearance")
    world.pretrain_rows = _manifest_rows(tracks, video_cam)
    for shots in tracks.shots:
        world.pretrain_shots += shots
    world.stats["pretrain"] = {
        "images": n_rows, "tracklets": len(tracklets), "videos": V, "identities": cfg.identities,
        "appearances": n_apps, "fragmented_appearances": len(fragmented),
        "extra_tracklets_from_fragmentation": len(tracklets) - n_apps,
        "switch_rows": budget_switch, "false_detection_rows": budget_fd,
        "cross_video_identities": int(sum(1 for i in range(cfg.identities)
                                          if sum(i in m for m in members) > 1)),
    }


def _plan_tracklets(world: World, rng: np.random.Generator, first_look: int, video_cam: np.ndarray,
                    members: list[list[int]], fragmented: set[int]):
    """Every appearance of a person in a video is one walking track (turns and light from
    their own random stream, see :func:`_walk`), cut into tracklets (fragmentation).

    Returns ``(tracklets, views_in_video)``: tracklets in video order, each ``(video,
    [(frame, shot, light), ...], main identity)``; ``views_in_video[(video, person)]`` is the
    person's first viewpoint there (an ID switch shows the other person from that view).
    """
    cfg = world.config
    motion = np.random.default_rng([cfg.seed, 7])   # turns and light: their own stream
    tracklets = []
    app_index = 0
    lo, hi = cfg.frames_per_appearance
    views_in_video: dict[tuple[int, int], str] = {}
    for v in range(cfg.videos):
        look = first_look + int(video_cam[v])
        scene = len(world.scenes)
        world.scenes.append((look, int(rng.integers(2**31))))
        pieces_of_video = []
        for i in members[v]:
            n = int(rng.integers(lo, hi + 1))
            start, stride = int(rng.integers(0, 500)), int(rng.integers(1, 4))
            view = sample_view(rng, world.looks[look])
            views_in_video[(v, i)] = view
            phase0, dphase = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 0.9) * stride
            pos0 = rng.uniform(0.1, 0.9)
            scale = rng.uniform(0.88, 1.04)
            views, light = _walk(motion, n, view, cfg)
            drift = np.array([{"right": 0.02, "left": -0.02}.get(w, 0.004) * stride for w in views])
            pos = pos0 + np.concatenate([[0.0], np.cumsum(drift[:-1])])
            shots = [(start + k * stride,
                      _shot(rng, PERSON, i, look, scene, pos[k], views[k], phase0 + dphase * k,
                            scale, light[k]), light[k])
                     for k in range(n)]
            for b, e in _split_track(rng, n, app_index in fragmented):
                pieces_of_video.append((shots[b][0], shots[b:e], i))
            app_index += 1
        pieces_of_video.sort(key=lambda p: (p[0], p[2]))
        tracklets += [(v, shots, i) for _, shots, i in pieces_of_video]
    return tracklets, views_in_video


@dataclass
class _Tracklets:
    """Per-tracklet columns the noise injection edits in place (lists of per-frame lists)."""

    video: list[int]
    main: list[int]
    frames: list[list[int]]
    shots: list[list[Shot]]
    lights: list[list[Light]]
    truth: list[list[int]]
    noise: list[list[str]]

    @classmethod
    def of(cls, tracklets) -> "_Tracklets":
        return cls(video=[v for v, _, _ in tracklets], main=[i for _, _, i in tracklets],
                   frames=[[f for f, _, _ in s] for _, s, _ in tracklets],
                   shots=[[sh for _, sh, _ in s] for _, s, _ in tracklets],
                   lights=[[li for _, _, li in s] for _, s, _ in tracklets],
                   truth=[[i] * len(s) for _, s, i in tracklets],
                   noise=[["none"] * len(s) for _, s, _ in tracklets])


def _inject_noise(world: World, rng: np.random.Generator, tracks: _Tracklets,
                  members: list[list[int]], views_in_video: dict, budget: int, kind: str) -> int:
    """Replace ``budget`` frames by noise of ``kind`` (``switch``: another person of the same
    video, seen as in that video; ``false_detection``: background or a partial crop), in
    contiguous runs, never reaching half a tracklet. Returns the budget that did not fit."""
    cap = [(len(s) - 1) // 2 for s in tracks.shots]  # noise never reaches half a tracklet
    passes = 0
    while budget > 0 and passes < 50:
        passes += 1
        progress = False
        for t in rng.permutation(len(tracks.shots)):
            if budget == 0:
                break
            v, main = tracks.video[t], tracks.main[t]
            L = len(tracks.shots[t])
            free = [k for k in range(L) if tracks.noise[t][k] == "none"]
            room = cap[t] - (L - len(free))
            if room <= 0:
                continue
            if kind == "switch":
                want = max(1, int(round(L * rng.uniform(0.15, 0.4))))
            else:
                want = int(rng.integers(1, 4))
            seg = min(want, room, budget)
            # a contiguous run of free frames: tail for switches half of the time
            runs = _free_runs(free, seg)
            if not runs:
                continue
            begin = runs[-1] if (kind == "switch" and rng.random() < 0.5) else runs[int(rng.integers(len(runs)))]
            others = [j for j in members[v] if j != main]
            other = int(rng.choice(others))
            for k in range(begin, begin + seg):
                base = tracks.shots[t][k]
                if kind == "switch":
                    tracks.shots[t][k] = _shot(rng, PERSON, other, base.look, base.scene, base.scene_pos,
                                               views_in_video[(v, other)], base.phase, base.scale,
                                               tracks.lights[t][k])
                    tracks.truth[t][k] = other
                else:
                    tracks.shots[t][k] = _noise_shot(rng, world, base.look, base.scene, members[v])
                    tracks.truth[t][k] = -1
                tracks.noise[t][k] = kind
            budget -= seg
            progress = True
        if not progress:
            break
    return budget


def _manifest_rows(tracks: _Tracklets, video_cam: np.ndarray) -> dict[str, list]:
    """The manifest columns of output A, one row per frame, tracklets in order."""
    rows = {k: [] for k in ("path", "video", "tracklet", "frame", "camera", "identity",
                            "true_identity", "noise")}
    for t, v in enumerate(tracks.video):
        for k, frame in enumerate(tracks.frames[t]):
            rows["path"].append(f"images/v{v:03d}/t{t:05d}_f{frame:05d}.jpg")
            rows["video"].append(f"v{v:03d}")
            rows["tracklet"].append(t)
            rows["frame"].append(frame)
            rows["camera"].append(int(video_cam[v]) + 1)
            rows["identity"].append(-1)
            rows["true_identity"].append(tracks.truth[t][k])
            rows["noise"].append(tracks.noise[t][k])
    return rows


def _free_runs(free: list[int], length: int) -> list[int]:
    """Start indices k such that k..k+length-1 are all in ``free`` (sorted)."""
    fs = set(free)
    return [k for k in free if all(k + j in fs for j in range(length))]


def plan_benchmark(world: World, rng: np.random.Generator, first_person: int, first_look: int,
                   n_distractor_people: int) -> None:
    """Fill ``world.bench_files`` / ``bench_shots`` for output B (Market-1501 layout)."""
    cfg = world.config
    C, N = cfg.cameras, cfg.bench_identities
    pids = np.arange(1, N + 1)
    perm = rng.permutation(pids)
    train = set(perm[: N // 2].tolist())
    used_names: set[str] = set()
    scene_of: dict[tuple[int, int], int] = {}
    counts = {"train_images": 0, "query": 0, "gallery": 0, "distractors": 0, "junk": 0}

    def scene_for(cam: int, seq: int) -> int:
        if (cam, seq) not in scene_of:
            scene_of[(cam, seq)] = len(world.scenes)
            world.scenes.append((first_look + cam - 1, int(rng.integers(2**31))))
        return scene_of[(cam, seq)]

    def name(pid: int, cam: int, seq: int) -> str:
        while True:
            n = f"{pid:04d}" if pid >= 0 else "-1"
            out = f"{n}_c{cam}s{seq}_{int(rng.integers(1, 999999)):06d}_{int(rng.integers(1, 9)):02d}.jpg"
            if out not in used_names:
                used_names.add(out)
                return out

    def add(folder: str, pid: int, cam: int, seq: int, shot: Shot) -> None:
        world.bench_files.append(f"{folder}/{name(pid, cam, seq)}")
        world.bench_shots.append(shot)

    for pid in pids.tolist():
        person = first_person + pid - 1
        cams = sorted(rng.choice(np.arange(1, C + 1), size=int(rng.integers(2, min(C, 5) + 1)),
                             replace=False).tolist())
        for cam in cams:
            seq = int(rng.integers(1, 7))
            look, scene = first_look + cam - 1, scene_for(cam, seq)
            view = sample_view(rng, world.looks[look])
            n = int(rng.integers(3, 8))
            pos0, phase0, scale = rng.uniform(0.1, 0.9), rng.uniform(0, 2 * math.pi), rng.uniform(0.88, 1.04)
            shots = [_shot(rng, PERSON, person, look, scene, pos0 + 0.03 * k, view,
                           phase0 + 1.7 * k, scale) for k in range(n)]
            if pid in train:
                for s in shots:
                    add("bounding_box_train", pid, cam, seq, s)
                counts["train_images"] += n
            else:
                q = int(rng.integers(n))
                for k, s in enumerate(shots):
                    add("query" if k == q else "bounding_box_test", pid, cam, seq, s)
                counts["query"] += 1
                counts["gallery"] += n - 1
    first_distractor = first_person + N
    n_distractors = max(4, int(round(0.1 * counts["gallery"])))
    n_junk = max(2, int(round(0.05 * counts["gallery"])))
    for k in range(n_distractors + n_junk):
        cam = int(rng.integers(1, C + 1))
        seq = int(rng.integers(1, 7))
        look, scene = first_look + cam - 1, scene_for(cam, seq)
        if k < n_distractors:  # other people (and some partial crops) labelled 0000
            p = first_distractor + int(rng.integers(n_distractor_people))
            if rng.random() < 0.7:
                shot = _shot(rng, PERSON, p, look, scene, rng.random(), sample_view(rng, world.looks[look]),
                             rng.uniform(0, 2 * math.pi), rng.uniform(0.88, 1.04))
            else:
                shot = _noise_shot(rng, world, look, scene, [p])
            add("bounding_box_test", 0, cam, seq, shot)
        else:  # junk -1: background and bad crops
            shot = _noise_shot(rng, world, look, scene, [first_distractor])
            add("bounding_box_test", -1, cam, seq, shot)
    counts["distractors"], counts["junk"] = n_distractors, n_junk
    counts["train_identities"] = len(train)
    counts["test_identities"] = N - len(train)
    world.stats["benchmark"] = counts


def plan_world(cfg: WorldConfig) -> World:
    """Plan both outputs. Deterministic in ``cfg``; independent streams per output."""
    cfg.check()
    streams = [np.random.default_rng([cfg.seed, k]) for k in range(4)]
    people_a = sample_people(streams[0], cfg.identities)
    n_distractor_people = max(4, cfg.bench_identities // 4)
    people_b = sample_people(streams[1], cfg.bench_identities + n_distractor_people)
    looks = [soften_look(sample_look(streams[2]), cfg.look_strength)
             for _ in range(2 * cfg.cameras)]  # A's cameras, then B's
    world = World(cfg, people_a + people_b, looks, scenes=[])
    plan_pretrain(world, streams[3], first_look=0)
    plan_benchmark(world, np.random.default_rng([cfg.seed, 5]), first_person=cfg.identities,
                   first_look=cfg.cameras, n_distractor_people=n_distractor_people)
    return world
