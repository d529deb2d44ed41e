"""No import circle among dna_fast's modules.

The import graph is read from the source with ``ast`` (module-level and function-level imports alike, since a lazy
import inside a function is still a dependency), and every strongly connected component must be a single module.
A module that two others need belongs below both (see docs/design.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "dna_fast"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every .py file under ``root``."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _lazy_exports(init: Path) -> dict[str, str]:
    """The package's ``_EXPORTS`` table (public name -> defining module), read without importing it."""
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source.

    ``from . import x`` depends on the submodule ``x`` when there is one, else on the package; a name the package
    re-exports lazily (``_EXPORTS``) resolves to its defining module. A module's own parent packages are not edges:
    Python initializes them before the module, whatever it imports.
    """
    mods = _modules(root)
    exports = _lazy_exports(root / "__init__.py")
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rpartition(".")[0]
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = []
                for alias in node.names:
                    if f"{module}.{alias.name}" in mods:
                        targets.append(f"{module}.{alias.name}")
                    elif module == PACKAGE and alias.name in exports:
                        targets.append(exports[alias.name])
                    else:
                        targets.append(module)
            else:
                continue
            for target in targets:
                # `import dna_fast.a.b` depends on dna_fast.a.b (and initializes its parents, which are packages)
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and target not in parents:
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, (
        "import circles among dna_fast's modules: "
        + "; ".join(" <-> ".join(c) for c in found)
        + ". Move what both sides need into a module below both (and re-export it where the old path was public)."
    )


def test_graph_sees_function_level_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('_EXPORTS = {"thing": "dna_fast.c"}\n')
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.d import g\n")
    (pkg / "c.py").write_text("import os\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("def g():\n    from dna_fast import thing\n    from .. import a\n")
    graph = import_graph(pkg)
    assert graph["dna_fast.a"] == {"dna_fast.b"}
    assert graph["dna_fast.b"] == {"dna_fast.sub.d"}
    assert graph["dna_fast.sub.d"] == {"dna_fast.c", "dna_fast.a"}
    assert cycles(graph) == [["dna_fast.a", "dna_fast.b", "dna_fast.sub.d"]]
    (pkg / "b.py").write_text("import os\n")
    assert cycles(import_graph(pkg)) == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}, [["a", "b", "c"], ["d", "e"]]),
])
def test_cycles_reference(edges, expected):
    assert cycles(edges) == expected


def test_function_exports_survive_submodule_imports():
    """`dna_fast.search` / `dna_fast.distill` stay the functions after their submodules are imported by name."""
    import importlib

    import dna_fast

    for name in ("search", "distill"):
        importlib.import_module(f"dna_fast.{name}")
        assert callable(getattr(dna_fast, name)) and not isinstance(getattr(dna_fast, name), type(dna_fast)), name
        assert getattr(dna_fast, name).__module__ == f"dna_fast.{name}"


# the ranking check's statistics: recomputable from units.csv with NumPy / SciPy alone
_NO_TORCH = ("dna_fast.rank_check._stats", "dna_fast.rank_check._calibration", "dna_fast.rank_check._analysis")
_NO_TORCH_ALLOWED = {"__future__", "collections", "math", "typing", "warnings", "numpy", "scipy"}


def _external_imports(path: Path) -> set[str]:
    """Top-level names of the non-relative imports anywhere in a file (``from scipy.stats import x`` -> scipy)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return names


def test_rank_check_statistics_import_no_torch():
    graph, mods = import_graph(), _modules(ROOT)
    reached, todo = set(_NO_TORCH), list(_NO_TORCH)
    while todo:
        for dep in graph[todo.pop()] - reached:
            reached.add(dep)
            todo.append(dep)
    assert reached == set(_NO_TORCH), f"the statistics import other modules: {sorted(reached - set(_NO_TORCH))}"
    for name in _NO_TORCH:
        extra = _external_imports(mods[name][0]) - _NO_TORCH_ALLOWED - {PACKAGE}
        assert not extra, f"{name} imports {sorted(extra)}: keep the statistics to NumPy / SciPy"


def test_rank_check_statistics_run_without_torch():
    """rank_check/_stats.py loaded on its own (not through dna_fast, whose __init__ loads timm) computes a bootstrap
    interval without torch ever being imported."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('rk_stats', {str(ROOT / 'rank_check' / '_stats.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "x, y = [1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5]\n"
        "assert abs(m.kendall_tau(x, y) - 11 / 15) < 1e-12, m.kendall_tau(x, y)\n"  # 2 of 15 pairs discordant
        "lo, hi = m.bootstrap_ci(x, y, 'rho', n_boot=50, seed=0)\n"
        "assert lo <= hi\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
