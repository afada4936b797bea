"""ReID evaluation speed and peak memory: cion vs torchreid (Python) vs fast-reid (Cython).

Set-up (once; the reference evaluators are NOT dependencies of cion):

    .venv/bin/pip install torch==2.13.0 torchvision==0.28.0 cython==3.3.1
    .venv/bin/python benchmarks/eval_speed.py --setup /tmp/reid_refs   # pip download + cythonize

``--setup`` fetches the PyPI sdists ``fastreid==1.4.0`` and ``torchreid==0.2.5`` (no install, no
dependencies), builds only fast-reid's ``rank_cy.pyx`` with Cython in place, and loads
torchreid's ``metrics/rank.py`` straight from the unpacked sdist. Then:

    .venv/bin/python benchmarks/eval_speed.py --refs /tmp/reid_refs             # Market + MSMT17
    .venv/bin/python benchmarks/eval_speed.py --refs /tmp/reid_refs --sizes "" --rerank-msmt

Problem: synthetic features (D = --dim) of identity centres plus noise, with Market-1501 sizes
(3,368 queries x 15,913 gallery, 750 ids, 6 cameras) and MSMT17 sizes (11,659 x 82,161, 3,060
ids, 15 cameras), 5% distractors (id 0). ``--noise`` sets model quality: the default gives a
trained model (Market size: mAP ~0.86, mINP ~0.35, Rank-1 ~0.99); ``weak`` (mAP ~0.25, mINP ~0.01)
is the hard case for cion's evaluator (most negatives rank before the last positive). Every evaluator runs in
its own fresh process (so its peak RSS is its own) on the same files, in the same run; numbers
are compared for equality. Times are wall-clock on whatever the machine is doing meanwhile.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"market": (3368, 15913, 750, 6), "msmt": (11659, 82161, 3060, 15)}
NOISE = {"trained": 2.2, "weak": 3.0}


# ------------------------------------------------------------------------------------ set-up
def setup(refs: Path) -> None:
    refs.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "-d", str(refs), "fastreid==1.4.0", "torchreid==0.2.5"], check=True)
    for sdist in glob.glob(str(refs / "*.tar.gz")):
        with tarfile.open(sdist) as t:
            t.extractall(refs, filter="data")
    cy = refs / "fastreid-1.4.0" / "fastreid" / "evaluation" / "rank_cylib"
    code = ("from setuptools import setup, Extension\nimport numpy as np\n"
            "from Cython.Build import cythonize\n"
            "setup(script_args=['build_ext', '--inplace'], ext_modules=cythonize([Extension("
            "'rank_cy', ['rank_cy.pyx'], include_dirs=[np.get_include()])]))\n")
    subprocess.run([sys.executable, "-c", code], cwd=cy, check=True)
    print(f"fast-reid rank_cy built in {cy}; torchreid sdist in {refs / 'torchreid-0.2.5'}")


def load_fastreid(refs: Path):
    sys.path.insert(0, str(refs / "fastreid-1.4.0" / "fastreid" / "evaluation" / "rank_cylib"))
    import rank_cy  # noqa: E402

    return rank_cy


def load_torchreid(refs: Path):
    import warnings

    path = refs / "torchreid-0.2.5" / "torchreid" / "reid" / "metrics" / "rank.py"
    spec = importlib.util.spec_from_file_location("torchreid_rank", path)
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "Cython evaluation unavailable": we want the Python one
        spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------ problem
def make_problem(out: Path, size: str, dim: int, noise: float, seed: int = 0) -> None:
    nq, ng, ids, cams = SIZES[size]
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, ids + 1, nq)
    g_pids = rng.integers(1, ids + 1, ng)
    g_pids[rng.random(ng) < 0.05] = 0                        # distractors
    q_cams, g_cams = rng.integers(0, cams, nq), rng.integers(0, cams, ng)
    centres = rng.standard_normal((ids + 1, dim), dtype=np.float32)
    cam_shift = 0.4 * rng.standard_normal((cams, dim), dtype=np.float32)
    def feats(p, c):
        x = centres[p] + cam_shift[c] + noise * rng.standard_normal((len(p), dim), dtype=np.float32)
        x[p == 0] = rng.standard_normal(((p == 0).sum(), dim), dtype=np.float32) * 1.4
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    np.save(out / "qf.npy", feats(q_pids, q_cams))
    np.save(out / "gf.npy", feats(g_pids, g_cams))
    np.savez(out / "labels.npz", q_pids=q_pids, g_pids=g_pids, q_cams=q_cams, g_cams=g_cams)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(method: str, data: Path, refs: Path | None) -> dict:
    """Runs in a fresh process: load inputs, time one evaluator, report peak RSS."""
    import torch

    lab = np.load(data / "labels.npz")
    qp, gp, qc, gc = lab["q_pids"], lab["g_pids"], lab["q_cams"], lab["g_cams"]
    qf, gf = np.load(data / "qf.npy"), np.load(data / "gf.npy")
    if method == "torchreid":
        ref = load_torchreid(refs)
    elif method.startswith("fastreid"):
        ref = load_fastreid(refs)
    from cion.evaluation import evaluate_features, evaluate_rank

    def distmat():
        return (1.0 - torch.from_numpy(qf) @ torch.from_numpy(gf).T).numpy()

    if method in ("cion_distmat", "fastreid", "torchreid"):
        d = distmat()               # the matrix is an input here: not timed
    base = rss_mb()
    t0 = time.perf_counter()
    t_dist = 0.0
    if method == "cion_features":
        r = evaluate_features(qf, gf, qp, gp, qc, gc)
        res = {"mAP": r["mAP"], "mINP": r["mINP"], "cmc": r["cmc"][:20].tolist()}
    elif method == "cion_distmat":
        r = evaluate_rank(d, qp, gp, qc, gc)
        res = {"mAP": r["mAP"], "mINP": r["mINP"], "cmc": r["cmc"][:20].tolist()}
    elif method == "fastreid":
        cmc, ap, inp = ref.evaluate_cy(d, qp, gp, qc, gc, 50)
        res = {"mAP": float(np.mean(ap)), "mINP": float(np.mean(inp)), "cmc": cmc[:20].tolist()}
    elif method == "fastreid_from_features":
        d = distmat()
        t_dist = time.perf_counter() - t0
        cmc, ap, inp = ref.evaluate_cy(d, qp, gp, qc, gc, 50)
        res = {"mAP": float(np.mean(ap)), "mINP": float(np.mean(inp)), "cmc": cmc[:20].tolist()}
    elif method == "torchreid":
        cmc, mAP = ref.eval_market1501(d, qp, gp, qc, gc, 50)
        res = {"mAP": float(mAP), "mINP": None, "cmc": cmc[:20].tolist()}
    elif method == "cion_rerank_features":
        from cion.evaluation import evaluate_distance_chunks
        from cion.evaluation.rerank import rerank_features

        r = evaluate_distance_chunks(rerank_features(qf, gf, stream=True, progress=False),
                                     len(qf), len(gf), qp, gp, qc, gc)
        res = {"mAP": r["mAP"], "mINP": r["mINP"], "cmc": r["cmc"][:20].tolist()}
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        plain = evaluate_features(qf, gf, qp, gp, qc, gc)          # not timed: for the gain
        return {"method": method, "seconds": seconds, "distance_seconds": 0.0,
                "peak_rss_mb": peak, "rss_before_mb": base, "mAP_without_rerank": plain["mAP"],
                **res}
    elif method == "classic_rerank_check":
        # a mid-size problem (N = 2,800) where the classic dense code still runs: same matrix?
        sys.path.insert(0, str(refs / "fastreid-1.4.0" / "fastreid" / "evaluation"))
        from rerank import re_ranking as classic  # fast-reid's copy of the original code
        from cion.evaluation.rerank import rerank_features

        q, g = torch.from_numpy(qf[:400]), torch.from_numpy(gf[:2400])
        ours = rerank_features(q, g, pair_budget=1 << 18)
        t_ours = time.perf_counter() - t0
        t1 = time.perf_counter()
        ref = classic((1 - q @ g.T).numpy(), (1 - q @ q.T).numpy(), (1 - g @ g.T).numpy())
        t_ref = time.perf_counter() - t1
        lab4 = (qp[:400], gp[:2400], qc[:400], gc[:2400])
        r = evaluate_rank(ours, *lab4)
        return {"method": method, "seconds": t_ours, "classic_seconds": t_ref, "distance_seconds": 0.0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_before_mb": base, "max_abs_diff_vs_classic": float(np.abs(ours - ref).max()),
                "classic_mAP": evaluate_rank(ref, *lab4)["mAP"],
                "mAP_without_rerank": evaluate_rank((1 - q @ g.T).numpy(), *lab4)["mAP"],
                "mAP": r["mAP"], "mINP": r["mINP"], "cmc": r["cmc"][:20].tolist()}
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "seconds": seconds, "distance_seconds": t_dist, "peak_rss_mb": peak,
            "rss_before_mb": base, **res}


def run_worker(method: str, data: Path, refs: Path | None, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--_worker", method, "--_data", str(data)]
    if refs:
        cmd += ["--refs", str(refs)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"method": method, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", type=Path, help="download + build the reference evaluators here")
    ap.add_argument("--refs", type=Path, help="folder made by --setup")
    ap.add_argument("--sizes", default="market,msmt")
    ap.add_argument("--quality", default="trained,weak", help="trained and/or weak model features")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--methods", help="only these (comma-separated): cion_features, cion_distmat, "
                    "fastreid_from_features, torchreid")
    ap.add_argument("--torchreid-msmt", action="store_true",
                    help="also run torchreid's Python evaluator at MSMT17 size (very slow)")
    ap.add_argument("--rerank-msmt", action="store_true",
                    help="also time + measure memory of re-ranking at MSMT17 size")
    ap.add_argument("--rerank-dim", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--_worker")
    ap.add_argument("--_data", type=Path)
    args = ap.parse_args()
    if args._worker:
        print(json.dumps(worker(args._worker, args._data, args.refs)))
        return
    if args.setup:
        setup(args.setup)
        return
    refs = args.refs
    if refs is None:
        print("no --refs: timing cion only (run --setup DIR first for the reference evaluators)")
    results = []
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        for size in [s for s in args.sizes.split(",") if s]:
            for quality in args.quality.split(","):
                data = Path(tmp) / f"{size}_{quality}"
                data.mkdir()
                make_problem(data, size, args.dim, NOISE[quality])
                methods = ["cion_features", "cion_distmat"]
                if refs:   # fast-reid times its distance matrix and its evaluation separately
                    methods += ["fastreid_from_features"]
                    if size == "market" or args.torchreid_msmt:
                        methods.append("torchreid")
                if args.methods:
                    methods = [m for m in methods if m in args.methods.split(",")]
                for m in methods:
                    nq, ng = SIZES[size][:2]
                    need = nq * ng * 12 / 2**30 + 2      # float32 matrix + int64 argsort + slack
                    if m.startswith("fastreid") and mem_available_gb() < need:
                        r = {"method": m, "error": f"skipped: needs ~{need:.0f} GB, "
                                                   f"{mem_available_gb():.0f} GB available"}
                    else:
                        r = run_worker(m, data, refs, args.timeout)
                    r.update(size=size, quality=quality, dim=args.dim)
                    results.append(r)
                    report_line(r)
                for f in data.iterdir():
                    f.unlink()
        if args.rerank_msmt:
            data = Path(tmp) / "rerank"
            data.mkdir()
            make_problem(data, "msmt", args.rerank_dim, NOISE["trained"])
            if refs:
                r = run_worker("classic_rerank_check", data, refs, args.timeout)
                r.update(size="400x2400", quality="trained", dim=args.rerank_dim)
                results.append(r)
                report_line(r)
                if "error" not in r:
                    print(f"    classic dense re-ranking {r['classic_seconds']:.2f} s, max |ours - "
                          f"classic| = {r['max_abs_diff_vs_classic']:.1e}, mAP {r['mAP_without_rerank']:.4f}"
                          f" -> {r['mAP']:.4f} (classic {r['classic_mAP']:.4f})", flush=True)
            r = run_worker("cion_rerank_features", data, None, args.timeout * 2)
            r.update(size="msmt", quality="trained", dim=args.rerank_dim)
            results.append(r)
            report_line(r)
            if "error" not in r:
                print(f"    mAP without re-ranking {r['mAP_without_rerank']:.4f}", flush=True)
    print()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report_line(r: dict) -> None:
    if "error" in r:
        print(f"{r['size']:>6} {r['quality']:>6} {r['method']:<24} {r['error']}", flush=True)
    else:
        print(f"{r['size']:>6} {r['quality']:>6} {r['method']:<24} {r['seconds']:8.2f} s  "
              f"peak RSS {r['peak_rss_mb'] / 1024:6.2f} GB  mAP {r['mAP']:.6f}", flush=True)


def print_table(results: list[dict]) -> None:
    """Markdown table; fast-reid's evaluation-only time = its total minus its distance matrix."""
    print("| size | features | evaluator | seconds (metrics only) | seconds (from features) | "
          "peak RSS (GB) | mAP | mINP | Rank-1 | same numbers as fast-reid |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = {(r["size"], r["quality"]): r for r in results
           if r["method"] == "fastreid_from_features" and "error" not in r}
    for r in results:
        if "error" in r:
            print(f"| {r['size']} | {r['quality']} | {r['method']} | {r['error']} | | | | | | |")
            continue
        m = r["method"]
        only = {"cion_distmat": r["seconds"], "torchreid": r["seconds"],
                "fastreid_from_features": r["seconds"] - r["distance_seconds"]}.get(m)
        full = {"cion_features": r["seconds"], "fastreid_from_features": r["seconds"],
                "cion_rerank_features": r["seconds"]}.get(m)
        f = ref.get((r["size"], r["quality"]))
        same = ""
        if f is not None and f is not r and "rerank" not in m:
            dm = abs(r["mAP"] - f["mAP"])
            dc = max(abs(a - b) for a, b in zip(r["cmc"], f["cmc"]))
            di = abs(r["mINP"] - f["mINP"]) if r.get("mINP") is not None else 0.0
            ok = dm < 1e-5 and dc < 1e-5 and di < 1e-5
            same = f"{'yes' if ok else 'NO'} (max diff {max(dm, dc, di):.1e})"
        minp = "" if r.get("mINP") is None else f"{100 * r['mINP']:.2f}"
        fmt = lambda x: "" if x is None else f"{x:.2f}"
        print(f"| {r['size']} | {r['quality']} | {m} | {fmt(only)} | {fmt(full)} | "
              f"{r['peak_rss_mb'] / 1024:.2f} | {100 * r['mAP']:.2f} | {minp} | "
              f"{100 * r['cmc'][0]:.2f} | {same} |")


if __name__ == "__main__":
    main()
