"""Which path each supernet block trains at each step: :class:`PathSampler` (uniform, or strictly fair as in FairNAS;
one path per block, or one per cell with ``cells="parallel"``).

DNA (Li et al., CVPR 2020, arXiv:1911.13053) trains one randomly sampled path per block and step. Paths are a pure
function of ``(seed, block, global step)``, so every DDP rank samples the same ones and a resumed run samples exactly
what the uninterrupted run would have. The machinery of :mod:`dna_fast.distill`, which re-exports it.
"""

from __future__ import annotations

import random

from .space import Candidate, SearchSpace

CELL_MODES = ("shared", "parallel")


class PathSampler:
    """The paths each block trains at each global step; a pure function of ``(seed, block, step)``.

    Args:
        space: the search space.
        seed: sampling seed.
        mode: ``"uniform"``: a uniformly random candidate (of the block, or of the cell with ``cells="parallel"``).
            ``"fair"``: strictly fair sampling (FairNAS-style). Shared cells: the steps are cut into cycles of
            ``K * C`` steps (K ops, C cells); in a cycle every cell is used K times and every op of every layer of
            every cell exactly once. Parallel cells: cycles of K steps per cell, every op of every layer once.
        cells: ``"shared"``: one path of the block per step (its cells share the block's steps). ``"parallel"``: one
            path of *every* cell per step, each cell's a function of ``(seed, block, the cell's depth and width,
            step)`` only, so a cell trains on the paths it would get in a supernet that holds only that cell (the
            authors' one supernet per depth).
    """

    def __init__(self, space: SearchSpace, seed: int = 0, mode: str = "uniform", cells: str = "shared") -> None:
        if mode not in ("uniform", "fair"):
            raise ValueError(f"sampling must be 'uniform' or 'fair', got {mode!r}")
        if cells not in CELL_MODES:
            raise ValueError(f"cells must be one of {', '.join(CELL_MODES)}, got {cells!r}")
        self.space, self.seed, self.mode, self.cells = space, int(seed), mode, cells
        self._cycle_cache: dict[tuple[int, int], tuple[list[int], list[list[list[int]]]]] = {}

    def __call__(self, block: int, step: int) -> Candidate:
        """The one path of block ``block`` at ``step`` (shared cells)."""
        if self.mode == "uniform":
            return self._uniform(block, step)
        return self._fair(block, step)

    def paths(self, block: int, step: int) -> list[Candidate]:
        """Every path block ``block`` trains at ``step``: one (shared cells) or one per cell (parallel)."""
        if self.cells == "shared":
            return [self(block, step)]
        return [self.cell_path(block, c, step) for c in range(len(self.space.blocks[block].cells))]

    def cell_path(self, i: int, c: int, step: int) -> Candidate:
        """The path of cell ``c`` of block ``i`` at ``step`` in parallel mode (uniform or fair within the cell)."""
        cell = self.space.blocks[i].cells[c]
        k = len(self.space.blocks[i].ops)
        key = f"{self.seed}-{i}-{cell.label}"
        if self.mode == "uniform":
            rng = random.Random(f"dna-cell-uniform-{key}-{step}")
            return self.space.candidate(i, c, [rng.randrange(k) for _ in range(cell.depth)])
        cycle, pos = divmod(step, k)
        rng = random.Random(f"dna-cell-fair-{key}-{cycle}")
        return self.space.candidate(i, c, [rng.sample(range(k), k)[pos] for _ in range(cell.depth)])

    def _uniform(self, i: int, step: int) -> Candidate:
        rng = random.Random(f"dna-uniform-{self.seed}-{i}-{step}")
        b = self.space.blocks[i]
        r = rng.randrange(self.space.num_candidates(i))
        k = len(b.ops)
        for c, cell in enumerate(b.cells):
            size = k ** cell.depth
            if r < size:
                ops = []
                for _ in range(cell.depth):
                    r, o = divmod(r, k)
                    ops.append(o)
                return self.space.candidate(i, c, ops[::-1])
            r -= size
        raise AssertionError("unreachable")

    def _cycle(self, i: int, cycle: int) -> tuple[list[int], list[list[list[int]]]]:
        key = (i, cycle)
        if key not in self._cycle_cache:
            if len(self._cycle_cache) > 64:
                self._cycle_cache.clear()
            rng = random.Random(f"dna-fair-{self.seed}-{i}-{cycle}")
            b = self.space.blocks[i]
            k = len(b.ops)
            order = [c for c in range(len(b.cells)) for _ in range(k)]
            rng.shuffle(order)
            perms = [[rng.sample(range(k), k) for _ in range(cell.depth)] for cell in b.cells]
            self._cycle_cache[key] = (order, perms)
        return self._cycle_cache[key]

    def _fair(self, i: int, step: int) -> Candidate:
        b = self.space.blocks[i]
        cycle_len = len(b.ops) * len(b.cells)
        cycle, pos = divmod(step, cycle_len)
        order, perms = self._cycle(i, cycle)
        cell = order[pos]
        t = order[:pos].count(cell)
        return self.space.candidate(i, cell, [perm[t] for perm in perms[cell]])
