"""The units of the study (one stand-alone training each) and running them: their order, their files
(``rank_check/blocks/block{b}/<candidate>_s<seed>.json``, ``rank_check/networks/<name>_s<seed>/``), claims so that
several processes share one study without training a unit twice, and the results rebuilt after every unit.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_json, atomic_write_text
from ._analysis import analyze
from ._plan import attach_compare
from ._report import plot, units_table, write_section

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _unit_name(candidate: str, seed: int) -> str:
    return f"{_SAFE.sub('_', candidate)}_s{seed}.json"


def _spread_order(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix is spread over the range: ends first, then bisection (0, n-1, mid, ...)."""
    if n <= 2:
        return list(range(n))
    out, queue = [0, n - 1], [(0, n - 1)]
    while queue:
        a, b = queue.pop(0)
        if b - a >= 2:
            m = (a + b) // 2
            out.append(m)
            queue += [(a, m), (m, b)]
    return out


def _block_order(entries: list[dict]) -> list[dict]:
    """A block's candidates (stored per cell in rating order) interleaved over cells, each cell in spread order."""
    cells: dict[int, list[dict]] = {}
    for e in entries:
        cells.setdefault(e["cell"], []).append(e)
    orders = [[es[k] for k in _spread_order(len(es))] for es in cells.values()]
    return [o[k] for k in range(max(map(len, orders), default=0)) for o in orders if k < len(o)]


def units(plan: dict, noise_seeds: int) -> list[tuple[str, Any]]:
    """The stand-alone trainings in the order they run: cheap block units first, then networks.

    Block units go round-robin over blocks, each block's candidates in spread order (:func:`_block_order`), so a
    study stopped early still covers every block, cell and rating range; then block-level found vs random (seed by
    seed, budget by budget), the seed-noise repeats, and the networks. A unit planned twice runs once.
    ``("block", (block, candidate, seed))`` or ``("net", (name, entry, seed))``.
    """
    s0 = plan["seed"]
    out: list[tuple[str, Any]] = []
    orders = {int(b): _block_order(es) for b, es in plan["blocks"].items()}
    for k in range(max(map(len, orders.values()), default=0)):
        out += [("block", (b, o[k]["candidate"], s0)) for b, o in orders.items() if k < len(o)]
    bf = plan.get("block_found") or {}
    for s in plan.get("block_found_seeds", []):
        for k in range(max(map(len, bf.values()), default=0)):
            for b, cases in bf.items():
                if k < len(cases):
                    out += [("block", (int(b), c, s)) for c in [cases[k]["found"], *cases[k]["random"]]]
    for b, cands in plan["noise"].items():
        out += [("block", (int(b), c, s0 + k)) for c in cands for k in range(1, noise_seeds)]
    fv = plan.get("found_vs_random")
    if fv:
        out += [("net", ("found", fv["found"], fv["seeds"][0]))]
        out += [("net", (n, plan["controls"][n], fv["seeds"][0])) for n in fv["random"]]
    out += [("net", (n, e, s0)) for n, e in plan["networks"].items()]
    if fv:
        for s in fv["seeds"][1:]:
            out += [("net", ("found", fv["found"], s))]
            out += [("net", (n, plan["controls"][n], s)) for n in fv["random"]]
    out += [("net", (n, plan["networks"][n], s)) for n in plan["noise_networks"] for s in plan["noise_seeds_net"][1:]]
    return _dedupe(out)


def _dedupe(todo: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The units in order, each block unit (block, candidate, seed) once (a candidate may be planned twice)."""
    seen: set[tuple] = set()
    out = []
    for kind, spec in todo:
        key = (kind, spec) if kind == "block" else (kind, spec[0], spec[2])
        if key not in seen:
            seen.add(key)
            out.append((kind, spec))
    return out


def collect_units(out_dir: Path) -> tuple[list[dict], dict[str, dict]]:
    """The finished units of a ``rank_check/`` folder."""
    blocks = [json.loads(p.read_text()) for p in sorted((out_dir / "blocks").glob("block*/*.json"))]
    nets = {}
    for p in sorted((out_dir / "networks").glob("*/metrics.json")):
        nets[p.parent.name] = json.loads(p.read_text())
    return blocks, nets


def unit_done(out_dir: Path, kind: str, spec: Any) -> bool:
    if kind == "block":
        b, c, s = spec
        return (out_dir / "blocks" / f"block{b}" / _unit_name(c, s)).is_file()
    name, _, s = spec
    return (out_dir / "networks" / f"{name}_s{s}" / "metrics.json").is_file()


def refresh(out_dir: Path, plan: dict, noise_seeds: int, n_boot: int, seed: int, extra: dict | None = None,
            plots: bool = True, compare: dict[str, Sequence[Any]] | None = None, equal_macs_tolerance: float = 0.1
            ) -> dict[str, Any]:
    """Rebuilds ``results.json``, ``units.csv``, ``report.md`` and (``plots``) the plots from the finished units
    (with the ratings of ``compare`` runs scored too, see :func:`attach_compare`)."""
    plan = attach_compare(plan, compare)
    blocks, nets = collect_units(out_dir)
    todo = units(plan, noise_seeds)
    done = sum(unit_done(out_dir, k, s) for k, s in todo)
    res = analyze(plan, blocks, nets, n_boot=n_boot, seed=seed, equal_macs_tolerance=equal_macs_tolerance)
    atomic_write_text(out_dir / "units.csv", units_table(plan, blocks).to_csv(index=False))
    res.update(block_metrics=plan["block_metrics"], network_metrics=plan["network_metrics"],
               complete=done == len(todo),
               status={"done": done, "total": len(todo),
                       "remaining": ", ".join(f"{sum(1 for k, s in todo if k == kind and not unit_done(out_dir, k, s))}"
                                              f" {label}" for kind, label in (("block", "block units"),
                                                                              ("net", "networks")))})
    if extra:
        res.update(extra)
    atomic_write_json(out_dir / "results.json", res)
    try:
        if plots:
            plot(res, plan, blocks, nets, out_dir)
    except ImportError:  # matplotlib missing: the tables are the result
        pass
    write_section(res, out_dir / "report.md")
    return res


def _claim_path(out_dir: Path, kind: str, spec: Any) -> Path:
    if kind == "block":
        b, c, s = spec
        return out_dir / "claims" / f"block{b}_{_unit_name(c, s)[:-5]}.claim"
    name, _, s = spec
    return out_dir / "claims" / f"net_{_SAFE.sub('_', name)}_s{s}.claim"


def _claim_holder_alive(text: str) -> bool:
    """Whether the process named by a claim (``pid@host``) still runs; a claim from another host, or one still
    being written, counts as alive."""
    pid, _, host = text.strip().partition("@")
    if not pid.isdigit() or host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def claim_unit(out_dir: Path, kind: str, spec: Any) -> Path | None:
    """Claims a unit for this process (a file ``rank_check/claims/<unit>.claim`` made with O_EXCL), so that several
    processes can work through one study without training a unit twice. Returns the claim's path, or None when
    another live process holds it. A claim left by a process that died (same host, pid gone) is taken over."""
    p = _claim_path(out_dir, kind, spec)
    p.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                text = p.read_text()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if _claim_holder_alive(text):
                return None
            p.unlink(missing_ok=True)  # stale: its process died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}@{socket.gethostname()}")
        return p
    return None


def run_units(out_dir: Path, plan: dict, noise_seeds: int, *, train_block: Callable[[int, str, int], dict],
              train_net: Callable[[str, dict, int], dict], n_boot: int, seed: int, log: Callable[[str], None],
              extra: dict | None = None, plots: bool = True, compare: dict[str, Sequence[Any]] | None = None,
              equal_macs_tolerance: float = 0.1) -> dict[str, Any]:
    """Runs every unit not done yet (each result written as it finishes), refreshing the results after each
    (the plots after every 8th and the last, unless ``plots`` is false).

    Several processes may run this on one folder at once (``rank_check.workers``): each unit is claimed first
    (:func:`claim_unit`) and skipped when another process holds it, so every unit is trained once.
    """
    todo = units(plan, noise_seeds)
    left = [u for u in todo if not unit_done(out_dir, *u)]
    log(f"[rank_check] {len(todo) - len(left)} of {len(todo)} units done before; {len(left)} to run")
    ran = 0
    for kind, spec in left:
        claim = claim_unit(out_dir, kind, spec)
        if claim is None:
            continue  # another worker trains it
        try:
            if unit_done(out_dir, kind, spec):  # finished by another worker since the list was made
                continue
            t0 = time.perf_counter()
            if kind == "block":
                b, c, s = spec
                r = train_block(b, c, s)
                p = out_dir / "blocks" / f"block{b}" / _unit_name(c, s)
                p.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(p, r)
                what = f"block {b} {c} seed {s}: val loss {r['val_loss']:.4g}"
            else:
                name, entry, s = spec
                r = train_net(name, entry, s)
                what = f"network {name} seed {s}: acc {r['acc']:.2f} %"
        finally:
            claim.unlink(missing_ok=True)
        ran += 1
        seconds = time.perf_counter() - t0
        res = refresh(out_dir, plan, noise_seeds, n_boot, seed, extra, plots=plots and ran % 8 == 0, compare=compare,
                      equal_macs_tolerance=equal_macs_tolerance)
        log(f"[rank_check] {res['status']['done']}/{len(todo)} {what} ({seconds:.1f} s)")
    return refresh(out_dir, plan, noise_seeds, n_boot, seed, extra, plots=plots, compare=compare,
                   equal_macs_tolerance=equal_macs_tolerance)
