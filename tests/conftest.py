"""Shared fixtures. The synthetic world is generated once per test session, small and fast."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small synthetic world (A: noisy tracklets, B: Market-layout benchmark) at 64x32.

    Layout: ``<root>/pretrain/manifest.parquet`` (+ images), ``<root>/market/{bounding_box_train,
    bounding_box_test,query}``, ``<root>/contact_sheet.png``, ``<root>/world.json``.
    """
    from cion.data.synth import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(identities=40, videos=12, cameras=4, image_size=(64, 32),
                      bench_identities=40, seed=0)
    generate_world(root, cfg, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module with one torch thread (2 threads on busy shared cores are far slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_pretrain_cfg():
    """Factory of a PretrainConfig small enough for a unit test: vit_micro (a 2-block ViT) on 32x16 crops,
    a 64-way head, 2 steps on CPU; keyword arguments override any field."""
    from cion.pretrain import PretrainConfig

    def make(**overrides):
        base = dict(arch="vit_micro", epochs=1, batch_size=8, local_crops=2, global_size=(32, 16),
                    local_size=(16, 8), out_dim=64, hidden_dim=32, bottleneck_dim=16,
                    num_workers=0, tensorboard=False, log_every=1, max_steps=2, device="cpu")
        return PretrainConfig(**dict(base, **overrides))

    return make


@pytest.fixture(scope="session", autouse=True)
def working_tree_stays_clean():
    """No test may leave files in the repository (outputs belong in tmp_path): new top-level
    entries or new untracked files after the session are an error."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ignore = {".pytest_cache", "__pycache__"}

    def snapshot():
        top = {p for p in os.listdir(root) if p not in ignore}
        try:
            res = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=root,
                                 capture_output=True, text=True, timeout=60)
            untracked = set(res.stdout.splitlines()) if res.returncode == 0 else set()
        except (OSError, subprocess.SubprocessError):
            untracked = set()
        return top, untracked

    before = snapshot()
    yield
    after = snapshot()
    new = sorted((after[0] - before[0]) | (after[1] - before[1]))
    assert not new, f"tests left files in the working tree: {new[:10]}"
