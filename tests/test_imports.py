"""The import graph of ``cion/`` has no cycle (module-level and in-function imports alike), and
the model registry stands alone: it imports neither the factory nor the checkpoint I/O."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(package: str = "cion") -> dict[str, set[str]]:
    """``{module: {cion modules it imports}}`` from every ``import`` / ``from ... import`` in the
    source (at any depth: inside functions too). ``from pkg import name`` counts as importing
    ``pkg.name`` when that is a module, else ``pkg``; relative imports are resolved."""
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = mod if mod in packages else mod.rsplit(".", 1)[0]
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:          # `import cion.x.y` of a name inside a module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    edges.add(t)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_graph_reader_sees_function_level_imports_and_cycles():
    graph = import_graph()
    assert "cion.models.checkpoint" in graph["cion.models.factory"]   # an in-function import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_cion_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_registry_imports_nothing_from_checkpoint_or_factory():
    graph = import_graph()
    assert not graph["cion.models.registry"] & {"cion.models.checkpoint", "cion.models.factory"}
    code = ("import sys, cion.models.registry; "
            "print(sorted(m for m in sys.modules if m.startswith('cion.models.checkpoint')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
