"""The documentation points at things that exist: README.md and every docs/*.md page.

* every relative link (and its #anchor) resolves to a file (and a heading) of the repository;
* every docs/*.md page is linked from the README (its Documentation list);
* every repository path named in the text (``benchmarks/...``, ``configs/...``, ``cion/...``,
  ``tests/...``, ``docs/...``) exists, and ``file.py:function`` names a function or class
  defined in that file;
* every ``cion`` sub-command named in code (``cion X``, ``cion zoo Y``, ``-m cion.cli X``)
  exists and ``cion X --help`` exits 0, and every ``--option`` written after it on the same
  command line is one of its visible options (not a former, hidden name).

Pages are found by glob, so pages added later are checked too. Fast: no subprocess, the
commands' --help runs in-process (their heavy imports happen only when they run).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import typer

from cion.cli import app, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
# a repository path: starts with one of the top-level folders, ends in a file name or a slash
PATH = re.compile(r"(?<![\w./-])((?:benchmarks|configs|cion|tests|docs)/[\w./-]*[\w/])")
FUNC = re.compile(r"(?<![\w./-])((?:cion|benchmarks|tests)/[\w/]+\.py):([A-Za-z_][\w.]*)")
COMMAND = re.compile(r"(?:^|[\s($;|&`])(?:cion|-m cion\.cli)\s+([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _code(text: str) -> list[str]:
    """Fenced blocks and inline code spans: where commands are written."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    rest = FENCE.sub("", text)
    return blocks + INLINE.findall(rest)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_pages_exist():
    assert (ROOT / "README.md").is_file()
    assert len(PAGES) > 1, "docs/*.md: no pages found"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall((ROOT / "README.md").read_text())}
    missing = [_rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md's Documentation list does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z+.-]*:", target):          # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor}")
    assert not bad, f"{_rel(page)}: " + "; ".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_paths_exist(page):
    text = page.read_text()
    bad = []
    for m in PATH.finditer(text):
        path, after = m.group(1), text[m.end():m.end() + 1]
        if (after and after in "*<{") or "..." in path:            # a pattern (benchmarks/demo_*), not a path
            continue
        if not (ROOT / path.rstrip(".")).exists():
            bad.append(path)
    bad = sorted(set(bad))
    for path, name in set(FUNC.findall(text)):
        file = ROOT / path
        last = name.split(".")[-1]
        if file.is_file() and not re.search(rf"^\s*(?:def|class)\s+{re.escape(last)}\b|^{re.escape(last)}\s*=",
                                            file.read_text(), re.M):
            bad.append(f"{path}:{name} (not defined there)")
    assert not bad, f"{_rel(page)} names missing paths: {sorted(bad)}"


@functools.lru_cache(maxsize=None)
def _root_command():
    return typer.main.get_command(app)


@functools.lru_cache(maxsize=None)
def _command_tree():
    root = _root_command()
    return {name: (set(cmd.list_commands(None)) if hasattr(cmd, "list_commands") else None)
            for name in root.list_commands(None) for cmd in [root.get_command(None, name)]}


def _named_commands() -> dict[tuple[str, ...], str]:
    """(command path) -> first page naming it."""
    tree = _command_tree()
    found = {}
    for page in PAGES:
        for code in _code(page.read_text()):
            for first, second in COMMAND.findall(code):
                path = (first, second) if tree.get(first) is not None and second else (first,)
                found.setdefault(path, _rel(page))
    return found


def test_named_commands_exist():
    tree = _command_tree()
    named = _named_commands()
    assert ("demo",) in named, "README should name `cion demo`"
    bad = [f"cion {' '.join(p)} ({page})" for p, page in named.items()
           if p[0] not in tree or (len(p) == 2 and p[1] not in tree[p[0]])]
    assert not bad, f"sub-commands named in the docs do not exist: {bad}"


@pytest.mark.parametrize("path", sorted(_named_commands()), ids=" ".join)
def test_named_commands_help(path, capsys):
    if path[0] not in _command_tree():
        pytest.skip("reported by test_named_commands_exist")
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0, capsys.readouterr().err
    assert "Usage: cion" in capsys.readouterr().out


@functools.lru_cache(maxsize=None)
def _visible_options(path: tuple[str, ...]) -> set[str]:
    cmd = _root_command()
    for name in path:
        cmd = cmd.get_command(None, name)
    return {o for p in cmd.params if p.param_type_name == "option" and not p.hidden
            for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def _command_lines(code: str):
    """(command path, options written after it) for each cion command line in a code snippet."""
    tree = _command_tree()
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0]
        m = COMMAND.search(line)
        if not m or m.group(1) not in tree:
            continue
        first, second = m.groups()
        path = (first, second) if tree[first] is not None and second else (first,)
        if len(path) == 2 and second not in tree[first]:
            continue
        yield path, re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line[m.end():])


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_options_exist(page):
    bad = set()
    for code in _code(page.read_text()):
        for path, options in _command_lines(code):
            bad.update(f"cion {' '.join(path)} {o}" for o in set(options) - _visible_options(path))
    assert not bad, f"{_rel(page)}: options that `cion ... --help` does not list: {sorted(bad)}"


def test_checks_catch_mistakes(tmp_path):
    """The patterns above see what they are meant to see (a dead link, a path, a command)."""
    text = ("See [x](docs/nowhere.md) and `python benchmarks/zoo_speed.py`, then\n"
            "```bash\ncion denoise --data m.parquet\ncion zoo export r --out r.onnx\n```\n"
            "`cion/pretrain/loss.py:IdentityDINOLoss`\n")
    assert LINK.findall(text) == ["docs/nowhere.md"]
    assert "benchmarks/zoo_speed.py" in PATH.findall(text)
    assert FUNC.findall(text) == [("cion/pretrain/loss.py", "IdentityDINOLoss")]
    assert [m for m in COMMAND.findall("\n".join(_code(text)))] == [("denoise", ""), ("zoo", "export")]
    lines = [c for code in _code(text) for c in _command_lines(code)]
    assert lines == [(("denoise",), ["--data"]), (("zoo", "export"), ["--out"])]
    assert "--onnx" not in _visible_options(("zoo", "export"))
    assert _slug("Denoising: tracklets -> identities (`cion.denoise`)") == \
        "denoising-tracklets---identities-ciondenoise"
