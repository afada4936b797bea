"""`cion --help` and its sub-commands read as one family (see docs/architecture.md).

* the sub-commands are listed in the order of the flow;
* the same thing has the same option name everywhere (--data, --out, --img-size, --device,
  --seed, --workers) and every option shows its default;
* the former names of renamed options still work (hidden aliases for existing scripts) and
  reach the stage function exactly as the new names do.
"""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import typer

from cion.cli import FLOW, app, main

#: former option name -> its name now; these spellings must not be visible in any --help
RENAMED = {"--image-size": "--img-size", "--root": "--data", "--manifest": "--data", "--onnx": "--out"}


def _commands(cmd=None, path=()):
    """(path, click command) for every leaf sub-command, recursively."""
    cmd = cmd or typer.main.get_command(app)
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(None):
            yield from _commands(cmd.get_command(None, name), path + (name,))
    else:
        yield path, cmd


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]


def test_commands_listed_in_flow_order(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out.split("Commands:")[1]
    names = [line.split()[0] for line in listing.splitlines()
             if line.startswith("  ") and not line.startswith("   ")]
    in_flow = [n for n in names if n in FLOW]
    assert in_flow == [n for n in FLOW if n in names]
    assert {"synth", "extract", "denoise", "pretrain", "evaluate", "zoo", "demo"} <= set(names)
    for name in in_flow:             # one line each, the FLOW text, not a cut docstring
        assert FLOW[name] in listing


def test_same_names_and_defaults_shown_everywhere():
    seen = set()
    for path, cmd in _commands():
        for opt in _options(cmd):
            seen.update(opt.opts)
            assert not set(opt.opts) & set(RENAMED), (path, opt.opts)
            shown = (opt.required or opt.is_flag or isinstance(opt.show_default, str)
                     or (opt.default is not None and opt.show_default is not False)
                     or "default" in (opt.help or "").lower() or "[required]" in (opt.help or ""))
            assert shown, f"cion {' '.join(path)} {opt.opts[0]}: no default shown"
        names = {o for opt in _options(cmd) for o in opt.opts}
        for wrong in ("--image-size", "--num-workers", "--output", "--gpu", "--root"):
            assert wrong not in names, (path, wrong)
    assert {"--out", "--img-size", "--device", "--seed", "--workers", "--data"} <= seen


@pytest.mark.parametrize("command", ["synth", "denoise", "evaluate", "zoo export"])
def test_former_names_hidden_from_help(command, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    text = capsys.readouterr().out
    for old, new in RENAMED.items():
        assert f"{old} " not in text
    assert {"synth": "--img-size", "denoise": "--data", "evaluate": "--data",
            "zoo export": "--out"}[command] in text


# ---- both spellings reach the stage function with the same value -----------------------------

def _patch_synth(monkeypatch, calls):
    import cion.data.synth as synth

    def fake(out, cfg, workers=1, progress=False):
        calls.append(cfg.image_size)
        return types.SimpleNamespace(describe=lambda: "ok")
    monkeypatch.setattr(synth, "generate_world", fake)


def _patch_denoise(monkeypatch, calls):
    import cion.denoise.io as io

    def fake(manifest, features, out, **kw):
        calls.append(Path(manifest))
        return {"params": {"sigma_cst": 0.2, "sigma_drm": 0.18, "range_half_width": 1, "levels": []},
                "levels": []}
    monkeypatch.setattr(io, "denoise_manifest", fake)


def _patch_evaluate(monkeypatch, calls):
    import cion.evaluation.pipeline as pipeline

    def fake(model, dataset, root, **kw):
        calls.append((Path(root), kw["device"]))
        return {"json": "m.json", "figures": []}
    monkeypatch.setattr(pipeline, "evaluate_model", fake)
    monkeypatch.setattr(pipeline, "format_table", lambda report: "")


def _patch_export(monkeypatch, calls):
    import torch

    import cion.models as models
    import cion.models.export as export

    monkeypatch.setattr(models, "create_model", lambda name, checkpoint=None: torch.nn.Identity())
    monkeypatch.setattr(models, "model_info", lambda name: {"reparameterizable": False})

    def fake(model, path, **kw):
        calls.append(Path(path))
        return types.SimpleNamespace(describe=lambda: "ok")
    monkeypatch.setattr(export, "export_onnx", fake)


CASES = {   # command, new spelling, old spelling, value, patch, what the function must receive
    "synth": (["synth", "--out", "W"], "--img-size", "--image-size", "96x48", _patch_synth, (96, 48)),
    "denoise": (["denoise", "--features", "f.npy", "--out", "o.parquet"], "--data", "--manifest",
                "m.parquet", _patch_denoise, Path("m.parquet")),
    "evaluate": (["evaluate", "--model", "colour-hist", "--dataset", "market1501"], "--data", "--root",
                 "mk", _patch_evaluate, (Path("mk"), None)),
    "zoo export": (["zoo", "export", "resnet18"], "--out", "--onnx", "r.onnx", _patch_export,
                   Path("r.onnx")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_former_name_is_an_alias(case, monkeypatch, tmp_path, capsys):
    args, new, old, value, patch, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    calls = []
    patch(monkeypatch, calls)
    for spelling in (new, old):
        with pytest.raises(SystemExit) as done:
            main([*args, spelling, value])
        assert done.value.code == 0, capsys.readouterr().err
    assert calls == [expected, expected]


@pytest.mark.parametrize("case", ["denoise", "evaluate", "zoo export"])
def test_renamed_required_option_missing_or_twice(case, monkeypatch, tmp_path, capsys):
    args, new, old, value, patch, _ = CASES[case]
    monkeypatch.chdir(tmp_path)
    calls = []
    patch(monkeypatch, calls)
    for extra in ([], [new, value, old, value]):
        with pytest.raises(SystemExit) as done:
            main([*args, *extra])
        err = capsys.readouterr().err
        assert done.value.code == 2 and new in err and len(err.strip().splitlines()) == 1, err
    assert calls == []


def test_device_auto_means_the_functions_default(monkeypatch, tmp_path, capsys):
    args, new, _, value, patch, _ = CASES["evaluate"]
    calls = []
    patch(monkeypatch, calls)
    for device, expected in (("auto", None), ("cpu", "cpu"), ("cuda:1", "cuda:1")):
        with pytest.raises(SystemExit):
            main([*args, new, value, "--device", device, "--out", str(tmp_path)])
    assert [c[1] for c in calls] == [None, "cpu", "cuda:1"]
