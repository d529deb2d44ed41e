"""Cost of training every cell every step (``distill.cells=parallel``) against shared cells and against the
authors' one supernet per depth.

`pytest benchmarks/test_bench_cells.py --benchmark-only -s`.

- shared: one teacher forward, then one path per block (the block's cells share its steps).
- parallel: one teacher forward, then one path of every cell of every block (``PathSampler(..., cells="parallel")``).
- per-depth runs (the authors'): one supernet per cell index, each trained in its own run; per batch every run
  runs the teacher and steps its cell of every block. The same per-cell step budget as parallel.

Before timing, one parallel step must give every cell the weights that the per-depth run of that cell gives it
(to 1e-6: the same paths, batches and optimizer arithmetic).

Why the baselines are fair: each runs the very training step ``dna_fast.distill`` runs (``BlockTrainer``), with
the same optimizer, precision and memory layout; the per-depth runs skip nothing the authors' runs would do (a
teacher pass per run per batch: their runs are separate processes), and the teacher runs only up to the last
stage the blocks need, under ``no_grad``. Steps are timed interleaved (best of n) so all see the same machine.
CPU: ``dna_mini`` (4 blocks; blocks 0, 1 and 3 with two cells), its teacher (random weights), batch 64, 32 px,
fp32, one thread.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import report

from dna_fast.distill import BlockTrainer, PathSampler, default_lrs
from dna_fast.space import SearchSpace
from dna_fast.supernet import Supernet
from dna_fast.teacher import Teacher


def _step(trainer: BlockTrainer, images: torch.Tensor, sampler: PathSampler, step: int) -> None:
    blocks = range(trainer.supernet.num_blocks)
    trainer.forward_backward(images, [sampler.paths(i, step) for i in blocks], blocks)
    trainer.optimizer_step(blocks)


@pytest.mark.benchmark(group="cells")
def test_parallel_cells_cost(benchmark):
    torch.set_num_threads(1)
    space = SearchSpace.load("dna_mini")
    torch.manual_seed(0)
    teacher = Teacher("dna_mini_teacher", space, allow_random_teacher=True).eval()
    full = Supernet(space, cell_stems=True).train()
    shared = Supernet(space).train()
    ncells = max(len(b.cells) for b in space.blocks)
    runs = [full.extract_cell(c).train() for c in range(ncells)]
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lrs = default_lrs(space.num_blocks)
    t_par = BlockTrainer(full, teacher, lrs)
    t_shared = BlockTrainer(shared, teacher, lrs)
    t_runs = [BlockTrainer(one, teacher, lrs) for one in runs]
    s_par, s_shared = PathSampler(space, 0, cells="parallel"), PathSampler(space, 0)
    s_runs = [PathSampler(one.space, 0, cells="parallel") for one in runs]

    # correctness first: one parallel step = one step of every per-depth run, cell by cell
    _step(t_par, images, s_par, 0)
    for c, (one, tr, sp) in enumerate(zip(runs, t_runs, s_runs)):
        _step(tr, images, sp, 0)
        want = full.extract_cell(c).state_dict()
        for k, v in one.state_dict().items():
            torch.testing.assert_close(v, want[k], rtol=0, atol=1e-6, msg=k)

    def per_depth(step: int) -> None:
        for tr, sp in zip(t_runs, s_runs):
            _step(tr, images, sp, step)

    fns = {"shared": lambda s: _step(t_shared, images, s_shared, s), "parallel": lambda s: _step(t_par, images,
                                                                                                  s_par, s),
           "per_depth_runs": per_depth}
    best = dict.fromkeys(fns, float("inf"))
    for s in range(1, 12):  # step 1: warm-up
        for name, f in fns.items():
            t0 = time.perf_counter()
            f(s)
            dt = time.perf_counter() - t0
            if s > 1:
                best[name] = min(best[name], dt)
    paths = {"shared": space.num_blocks, "parallel": sum(len(b.cells) for b in space.blocks)}
    report("distill cells, dna_mini, batch 64, 1 thread", shared_ms=best["shared"] * 1e3,
           parallel_ms=best["parallel"] * 1e3, per_depth_runs_ms=best["per_depth_runs"] * 1e3,
           parallel_over_shared=best["parallel"] / best["shared"],
           per_depth_over_parallel=best["per_depth_runs"] / best["parallel"],
           paths_shared=paths["shared"], paths_parallel=paths["parallel"])
    benchmark.pedantic(lambda: _step(t_par, images, s_par, 20), rounds=3, iterations=1)
