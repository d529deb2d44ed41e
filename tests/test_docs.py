"""The docs stay true: README.md, CONTRIBUTING.md and docs/*.md.

* Every fenced Python block marked runnable (an HTML comment ``<!-- runnable -->`` on the line before the fence)
  runs, in a fresh namespace, in a temporary working directory. Such blocks use small data so this stays fast.
* Every other ``python`` block at least compiles.
* Every relative link resolves: the file exists, and a ``#fragment`` names a heading of the target page (GitHub's
  anchors).
* docs/pipeline.md lists exactly the config keys that ``dna_fast/config.py`` defines.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = "<!-- runnable -->"


def doc_files(root: Path = ROOT) -> list[Path]:
    files = [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").rglob("*.md"))]
    return [f for f in files if f.is_file()]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    runnable: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path.name}:{self.line}"


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their language and whether they are marked runnable."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path}:{i + 1}: code fence never closed")
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n", prev == RUNNABLE))
        i = j + 1
    return blocks


def _prose(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside code fences, inline code spans removed."""
    out, fence = [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append((n, re.sub(r"`[^`]*`", "", line)))
    return out


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces to dashes, -1, -2 for
    repeats)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_with_code(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _prose_with_code(path: Path) -> list[tuple[int, str]]:
    """Like ``_prose`` but inline code kept (headings keep the text of their code spans)."""
    out, fence = [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append((n, line))
    return out


_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")


def broken_links(path: Path) -> list[str]:
    """Every relative link of ``path`` whose file or heading anchor does not exist, as ``file:line: target``."""
    bad = []
    for n, line in _prose(path):
        targets = _LINK.findall(line) + _REF.findall(line)
        for target in targets:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, frag = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                bad.append(f"{path}:{n}: {target} (no such file)")
            elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                bad.append(f"{path}:{n}: {target} (no heading #{frag} in {dest.name})")
    return bad


BLOCKS = [b for f in doc_files() for b in code_blocks(f)]


def test_docs_exist_and_have_a_runnable_example():
    names = {f.relative_to(ROOT).as_posix() for f in doc_files()}
    assert {"README.md", "CONTRIBUTING.md", "docs/pipeline.md"} <= names
    assert any(b.runnable and b.path.name == "README.md" for b in BLOCKS), "the README's library example is not " \
        f"marked runnable (put {RUNNABLE} on the line before its fence)"
    assert not (ROOT / "docs" / "HELPERS.md").exists()
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 160, f"README.md has {n} lines: keep it a front door (~150 lines) and move reference text to docs/"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.runnable], ids=lambda b: b.id)
def test_runnable_block_runs(block, tmp_path, monkeypatch, one_thread):
    assert block.lang in ("python", "py"), f"{block.id}: only Python blocks can be marked runnable"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("python", "py") and not b.runnable],
                         ids=lambda b: b.id)
def test_python_block_compiles(block):
    compile(block.code, block.id, "exec")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def _documented_keys(page: Path) -> dict[str, set[str]]:
    """Section -> keys of the tables under '## Config keys' in ``page`` (section '' for the top level)."""
    keys: dict[str, set[str]] = {}
    section = None
    in_keys = False
    for line in page.read_text().splitlines():
        if line.startswith("## "):
            in_keys = line.strip() == "## Config keys"
            continue
        if not in_keys:
            continue
        m = re.match(r"^### (?:`(\w+)`|Top level)", line)
        if m:
            section = m.group(1) or ""
            keys.setdefault(section, set())
            continue
        m = re.match(r"^\| `(\w+)` \|", line)
        if m and section is not None:
            keys[section].add(m.group(1))
    return keys


def test_pipeline_page_lists_every_config_key():
    from dna_fast import config

    hints = config._hints(config.RunConfig)
    expected: dict[str, set[str]] = {"": set()}
    for f in dataclasses.fields(config.RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            expected[f.name] = {g.name for g in dataclasses.fields(hints[f.name])}
        else:
            expected[""].add(f.name)
    assert _documented_keys(ROOT / "docs" / "pipeline.md") == expected


def test_checkers_find_problems(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## The `x` key, explained\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\nSee [a](docs/a.md), [x](docs/a.md#the-x-key-explained), [here](#title), [web](https://x.org).\n"
        "Broken: [b](docs/b.md), [c](docs/a.md#nope) and `[code](not/a/link.md)` is code.\n\n"
        f"{RUNNABLE}\n```python\nx = 1\n```\n\n```python\ny = (\n```\n\n```\n[z](missing.md)\n```\n"
    )
    assert broken_links(page) == [f"{page}:4: docs/b.md (no such file)",
                                  f"{page}:4: docs/a.md#nope (no heading #nope in a.md)"]
    blocks = code_blocks(page)
    assert [(b.lang, b.runnable, b.line) for b in blocks] == [
        ("python", True, 7), ("python", False, 11), ("", False, 15)]
    with pytest.raises(SyntaxError):
        compile(blocks[1].code, "b", "exec")
    assert "the-x-key-explained" in anchors(tmp_path / "docs" / "a.md")


def test_design_page_names_every_module():
    text = (ROOT / "docs" / "design.md").read_text()
    pkg = ROOT / "dna_fast"
    names = [p.stem for p in pkg.glob("*.py") if p.stem != "__init__"]
    names += [f"{p.name}/" for p in pkg.iterdir() if (p / "__init__.py").is_file()]
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/design.md's module map does not name {missing}: add a row for each"
