"""Every third-party module imported under ``cion/`` is a declared dependency (pyproject.toml).

Reads the imports with :mod:`ast` (module level and inside functions, so lazy imports count) and
the dependency lists of ``pyproject.toml``; installs nothing. A module is fine when its
distribution is a core dependency, or an optional extra ``X`` that every importing file names in
its error message (``pip install 'cion-reid[X]'``), so the command tells the user what to install.
"""
from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:                        # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

#: import name -> distribution where the environment cannot tell (module not installed here)
KNOWN = {"PIL": "pillow", "yaml": "PyYAML", "sklearn": "scikit-learn", "faiss": "faiss-cpu",
         "onnxruntime": "onnxruntime", "onnx": "onnx", "tomli": "tomli"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0])


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(core distributions, {extra: distributions}) of pyproject.toml, normalised names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {k: {_requirement_name(r) for r in v}
              for k, v in project.get("optional-dependencies", {}).items()}
    return core, extras


def third_party_imports(package: Path = ROOT / "cion") -> dict[str, set[Path]]:
    """{top-level module: files importing it} for every non-stdlib, non-cion absolute import."""
    found: dict[str, set[Path]] = {}
    for f in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "cion" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(f)
    return found


def distribution_of(module: str) -> str:
    """The distribution providing ``module``: KNOWN, else one of the same name, else the
    environment's (slow) map of top-level modules."""
    if module in KNOWN:
        return _norm(KNOWN[module])
    try:
        return _norm(metadata.distribution(module).metadata["Name"])
    except metadata.PackageNotFoundError:
        dists = metadata.packages_distributions().get(module)
    assert dists, f"cannot tell which distribution provides '{module}'; add it to KNOWN here"
    return _norm(sorted(dists)[0])


def test_import_scan_sees_lazy_imports():
    """The scan must see imports inside functions (faiss is only imported there)."""
    found = third_party_imports()
    assert ROOT / "cion/denoise/noise.py" in found["faiss"]
    assert "numpy" in found and "torch" in found and "os" not in found and "cion" not in found


def test_every_third_party_import_is_declared():
    core, extras = declared()
    problems = []
    for module, files in sorted(third_party_imports().items()):
        dist = distribution_of(module)
        if dist in core:
            continue
        in_extras = [x for x, dists in extras.items() if dist in dists]
        if not in_extras:
            problems.append(f"{module} ({dist}) is imported by {sorted(map(str, files))} but not "
                            "declared in pyproject.toml")
            continue
        for f in files:                      # the importing command must name the extra
            if not any(f"cion-reid[{x}]" in f.read_text() for x in in_extras):
                problems.append(f"{f} imports {module} from extra {in_extras} without telling "
                                f"the user to pip install 'cion-reid[{in_extras[0]}]'")
    assert not problems, "\n".join(problems)


def test_denoising_needs_faiss_from_core():
    """`cion denoise` at scale imports faiss (n_S neighbour search, coarse order): it is core."""
    core, _ = declared()
    assert "faiss-cpu" in core


def test_requirements_pin_every_core_dependency():
    """requirements.txt (what `make` installs) pins each core dependency of pyproject."""
    core, _ = declared()
    pinned = {_requirement_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert core <= pinned, f"not pinned in requirements.txt: {sorted(core - pinned)}"
