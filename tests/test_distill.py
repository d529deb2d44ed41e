"""Distillation: one step vs a plain per-block reference, sampling, logs, resume after SIGKILL, NaN stop, DDP."""

import copy
import csv
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from dna_fast.distill import CHECKPOINT_NAME, LOG_COLUMNS, PathSampler, default_lrs, distill, load_supernet
from dna_fast.space import SearchSpace
from dna_fast.supernet import Supernet, one_cell_space
from dna_fast.teacher import Teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(progress=False, tensorboard=False, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


class _Batches:
    """Fixed random batches (``n`` per epoch, new ones per epoch); ``len``/``set_epoch`` like the real loaders."""

    def __init__(self, n=3, bs=8, size=32, seed=0, part=None):
        self.n, self.bs, self.size, self.seed, self.part, self.epoch = n, bs, size, seed, part, 0

    def __len__(self):
        return self.n

    def set_epoch(self, e):
        self.epoch = e

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        for _ in range(self.n):
            x = torch.randn(self.bs, 3, self.size, self.size, generator=g)
            if self.part is not None:  # (rank, world): this rank's contiguous share of the combined batch
                r, w = self.part
                per = self.bs // w
                x = x[r * per:(r + 1) * per]
            yield x, torch.zeros(x.shape[0], dtype=torch.long)


def _models(seed=0, **supernet_kwargs):
    """A supernet initialized from ``seed`` and the same random teacher whatever the seed."""
    torch.manual_seed(1234)
    teacher = Teacher("dna_mini_teacher", "dna_mini", allow_random_teacher=True)
    torch.manual_seed(seed)
    return Supernet("dna_mini", **supernet_kwargs), teacher


def _calibrated_teacher() -> Teacher:
    """A random teacher whose BN statistics were measured on data (as a trained network's are): every stage's feature
    has a standard deviation ~1.4, where the raw random teacher's shrink to ~0.003 by the last stage (a student that
    outputs zeros would match those within a few %)."""
    from dna_fast.teacher import build_embedded_teacher

    torch.manual_seed(1234)
    m = build_embedded_teacher("dna_mini")
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None  # cumulative average over the batches below
            bn.reset_running_stats()
    g = torch.Generator().manual_seed(0)
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(8, 3, 32, 32, generator=g))
    return Teacher(m.eval(), "dna_mini")


def _assert_same(a, b, exact=True):
    """Bit-identical state, or (``exact=False``) equal up to float reduction order amplified by Adam."""
    num = den = 0.0
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if exact:
            assert torch.equal(x, y), k
        elif x.is_floating_point():
            # NOTE Adam turns noise-level gradients into +-lr steps, so single elements may differ by ~lr
            torch.testing.assert_close(x, y, rtol=0, atol=2e-3, msg=k)
            num += float(((x - y) ** 2).sum())
            den += float((y ** 2).sum())
    if not exact:
        assert math.sqrt(num / den) < 1e-4


def test_default_lrs_and_sampler():
    assert default_lrs(6) == [0.002, 0.005, 0.005, 0.005, 0.005, 0.002]
    assert default_lrs(4) == [0.002, 0.005, 0.005, 0.002] and default_lrs(1) == [0.002]
    space = SearchSpace.load("dna_mini")
    u1, u2 = PathSampler(space, 3), PathSampler(space, 3)
    seq = [u1(1, s) for s in range(200)]
    assert seq == [u2(1, s) for s in reversed(range(200))][::-1]  # pure function of (seed, block, step)
    assert seq != [PathSampler(space, 4)(1, s) for s in range(200)]
    assert len(set(seq)) > 50  # block 1 has 4**2 + 4**3 = 80 candidates
    fair = PathSampler(space, 0, "fair")
    for i, b in enumerate(space.blocks):
        k, cycle = len(b.ops), len(b.ops) * len(b.cells)
        for c0 in (0, cycle, 5 * cycle):
            cands = [fair(i, s) for s in range(c0, c0 + cycle)]
            for c in range(len(b.cells)):
                mine = [x for x in cands if x.cell == c]
                assert len(mine) == k
                for layer in range(b.cells[c].depth):
                    assert sorted(x.ops[layer] for x in mine) == list(range(k))
    with pytest.raises(ValueError, match="sampling"):
        PathSampler(space, 0, "greedy")


def test_one_step_matches_per_block_reference(tmp_path):
    """All blocks from one teacher pass == each block trained alone on the full teacher's features (plain Adam)."""
    sn, t = _models()
    ref = copy.deepcopy(sn)
    data = _Batches(n=1)
    calls = []
    t.register_forward_hook(lambda m, i, o: calls.append(1))
    out = distill(sn, t, data, tmp_path, epochs=1, lr=[1e-3, 2e-3, 3e-3, 4e-3], **FAST)
    assert len(calls) == 1  # one teacher forward fed every block
    x = next(iter(data))[0]
    feats = t.block_pairs(x)
    sampler = PathSampler(ref.space, 0)
    ref.train()
    for i, (inp, tgt) in enumerate(feats):
        opt = torch.optim.Adam(ref.block_parameters(i), lr=[1e-3, 2e-3, 3e-3, 4e-3][i], weight_decay=1e-4)
        loss = F.mse_loss(ref.forward_block(i, inp, sampler(i, 0)), tgt)
        loss.backward()
        opt.step()
        assert math.isclose(out["block_losses"][i], loss.item(), rel_tol=1e-6)
    _assert_same(sn, ref)


def test_logs_checkpoint_and_load(tmp_path):
    sn, t = _models()
    out = distill(sn, t, _Batches(n=4), tmp_path, epochs=2, log_every=2, progress=True, device="cpu",
                  loss="rel_mse", sampling="fair")
    assert out["trained_epochs"] == [0, 1] and out["global_step"] == 8
    with open(tmp_path / "distill" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [(int(r["epoch"]), int(r["step"]), int(r["block"])) for r in rows] == [
        (e, s, b) for e in (0, 1) for s in (2, 4) for b in range(4)]
    lrs = {(int(r["epoch"]), int(r["block"])): float(r["lr"]) for r in rows}
    assert math.isclose(lrs[(1, 1)], 0.005 * 0.9, rel_tol=1e-5)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "distill" / "tb"))
    ckpt = torch.load(tmp_path / "checkpoints" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 0
    _assert_same(load_supernet(tmp_path, "dna_mini"), sn)
    _assert_same(load_supernet(tmp_path), sn)
    with pytest.raises(FileNotFoundError, match="run the distill stage"):
        load_supernet(tmp_path / "nothing", "dna_mini")
    with pytest.raises(ValueError, match="different config.*seed"):
        distill(sn, t, _Batches(n=4), tmp_path, epochs=3, seed=1, **FAST)


def test_extend_trains_only_new_epochs(tmp_path):
    sn, t = _models()
    distill(sn, t, _Batches(), tmp_path / "a", epochs=2, **FAST)
    sn2, t2 = _models()
    first = distill(sn2, t2, _Batches(), tmp_path / "b", epochs=1, **FAST)
    sn3, t3 = _models(seed=5)  # weights come from the checkpoint
    again = distill(sn3, t3, _Batches(), tmp_path / "b", epochs=1, **FAST)
    assert first["trained_epochs"] == [0] and again["trained_epochs"] == [] and again["resumed"]
    more = distill(sn3, t3, _Batches(), tmp_path / "b", epochs=2, **FAST)
    assert more["trained_epochs"] == [1]
    _assert_same(sn3, sn)


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_distill import _Batches, _models
    from dna_fast.distill import distill

    class Killing(_Batches):
        def __iter__(self):
            for k, b in enumerate(super().__iter__()):
                if self.epoch == 1 and k == 3:
                    os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch, after the step-2 checkpoint
                yield b

    sn, t = _models()
    distill(sn, t, Killing(n=5), {run!r}, epochs=2, checkpoint_every_steps=2, progress=False, device="cpu")
""")


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    sn, t = _models()
    distill(sn, t, _Batches(n=5), tmp_path / "ref", epochs=2, checkpoint_every_steps=2, **FAST)
    run = tmp_path / "killed"
    script = _KILL_SCRIPT.format(tests=os.path.join(ROOT, "tests"), run=str(run))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    ckpt = torch.load(run / "checkpoints" / CHECKPOINT_NAME, weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["global_step"]) == (1, 2, 7)
    sn2, t2 = _models(seed=9)
    out = distill(sn2, t2, _Batches(n=5), run, epochs=2, checkpoint_every_steps=2, progress=False, device="cpu")
    assert out["resumed"] and out["trained_epochs"] == [1]
    _assert_same(sn2, sn)
    with open(run / "distill" / "log.csv") as f:
        steps = [(int(r["epoch"]), int(r["step"]), int(r["block"])) for r in csv.DictReader(f)]
    with open(tmp_path / "ref" / "distill" / "log.csv") as f:
        ref_steps = [(int(r["epoch"]), int(r["step"]), int(r["block"])) for r in csv.DictReader(f)]
    assert steps == ref_steps  # rows written after the checkpoint by the killed run were dropped


class _PoisonTeacher(torch.nn.Module):
    """Wraps a teacher; from call ``at`` on, block ``block``'s target is inf."""

    def __init__(self, teacher, block, at):
        super().__init__()
        self.t, self.block, self.at, self.calls, self.space = teacher, block, at, 0, teacher.space

    def forward(self, x, upto=None):
        feats = self.t(x, upto=upto)
        self.calls += 1
        if self.calls > self.at:
            feats[self.block] = torch.full_like(feats[self.block], float("inf"))
        return feats


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    sn, t = _models()
    distill(sn, t, _Batches(n=3), tmp_path, epochs=1, **FAST)
    good = copy.deepcopy(sn.state_dict())
    with pytest.raises(FloatingPointError, match=r"block 2 at epoch 1 step 1 \(global step 4"):
        distill(sn, _PoisonTeacher(t, block=2, at=1), _Batches(n=3), tmp_path, epochs=2, **FAST)
    ckpt = torch.load(tmp_path / "checkpoints" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["epoch"] == 1
    for k, v in good.items():
        assert torch.equal(ckpt["supernet"][k], v), k


def test_damaged_checkpoint_is_refused_and_kept(tmp_path):
    from dna_fast._io import DamagedFileError

    ck = tmp_path / "checkpoints" / CHECKPOINT_NAME
    ck.parent.mkdir(parents=True)
    junk = b"PK\x03\x04" + bytes(range(200))  # a zip header, then nothing a checkpoint holds
    ck.write_bytes(junk)
    with pytest.raises(DamagedFileError, match=r"supernet checkpoint .*supernet_last.pt' cannot be read.*resume=False"):
        distill(*_models(), _Batches(n=1), tmp_path, epochs=1, **FAST)
    with pytest.raises(DamagedFileError, match="supernet_last.pt"):
        load_supernet(tmp_path, "dna_mini")
    assert ck.read_bytes() == junk


def _amp_losses(tmp_path, amp, device="cpu", **kw):
    sn, _ = _models()
    t, run = _calibrated_teacher(), tmp_path / amp
    if amp == "fp32-teacher-halved":  # a wrong answer the comparison must reject: half the teacher's feature
        amp, t.forward = "fp32", lambda x, upto=None, f=t.forward: [v * 0.5 for v in f(x, upto=upto)]
    opts = dict(FAST, device=device, **kw)
    return distill(sn, t, _Batches(n=2), run, epochs=1, amp=amp, **opts)["block_losses"]


# relative difference of the distillation losses allowed for AMP vs fp32: a few units of the format's rounding
# (bf16 2^-9, fp16 2^-12) over the ~20 layers of a block; measured 0.2-1.2 % (bf16) and <= 0.05 % (fp16) here
AMP_RTOL = {"bf16": 0.03, "fp16": 0.005}


def test_amp_bf16_and_fp16_close_to_fp32(tmp_path):
    ref = _amp_losses(tmp_path, "fp32")
    assert min(ref) > 0.5  # a non-trivial teacher: the error to it is large, not the few % of near-zero targets
    wrong = _amp_losses(tmp_path, "fp32-teacher-halved")
    for amp in ("bf16", "fp16"):
        out = _amp_losses(tmp_path, amp)
        for a, b, w in zip(out, ref, wrong):
            assert math.isclose(a, b, rel_tol=AMP_RTOL[amp]), (amp, out, ref)
            assert not math.isclose(w, b, rel_tol=10 * AMP_RTOL["bf16"]), (wrong, ref)  # the check can fail
    ckpt = torch.load(tmp_path / "fp16" / "checkpoints" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the GradScaler state is checkpointed
    with pytest.raises(ValueError, match="amp must be"):
        distill(*_models(), _Batches(n=2), tmp_path / "x", epochs=1, amp="int8", **FAST)


@pytest.mark.slow
def test_compiled_ops_match_eager(tmp_path):
    sn, t = _models()
    distill(sn, t, _Batches(n=2), tmp_path / "eager", epochs=1, **FAST)
    sn2, t2 = _models()
    distill(sn2, t2, _Batches(n=2), tmp_path / "compiled", epochs=1, compile="eager", **FAST)
    assert any(hasattr(m, "_compiled_call_impl") and m._compiled_call_impl is not None for m in sn2.modules())
    _assert_same(sn2, sn)  # dynamo's eager backend: same kernels, so bit-identical; names of the state unchanged


def _ddp_worker(rank, world, tmp, port):
    from timm.layers import GroupNorm1

    from dna_fast import distributed as dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = dist.init_distributed(device="cpu")  # as under torchrun: gloo on CPU
    assert (info.rank, info.world_size, dist.is_main()) == (rank, world, rank == 0)
    try:
        # different init per rank: distill broadcasts rank 0's weights
        sn, t = _models(seed=rank, norm_layer=GroupNorm1)
        distill(sn, t, _Batches(n=3, bs=8, part=(rank, world)), tmp, epochs=2, **FAST)
        x = torch.tensor([float(rank)])
        assert dist.all_reduce_mean(x).item() == (world - 1) / 2
    finally:
        dist.cleanup()


def test_ddp_two_gloo_ranks_match_one_process(tmp_path):
    """2 ranks with 4 images each == 1 process with the 8-image batch (per-sample norm; BN would need SyncBN)."""
    import socket

    import torch.multiprocessing as mp
    from timm.layers import GroupNorm1

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "ddp"), port), nprocs=2, join=True,
                       start_method="spawn")
    sn, t = _models(seed=0, norm_layer=GroupNorm1)
    distill(sn, t, _Batches(n=3, bs=8), tmp_path / "one", epochs=2, **FAST)
    ddp = load_supernet(tmp_path / "ddp", "dna_mini", norm_layer=GroupNorm1)
    _assert_same(ddp, sn, exact=False)
    init, _ = _models(seed=0, norm_layer=GroupNorm1)
    with pytest.raises(AssertionError):  # the tolerance is far below what training moves
        _assert_same(init, sn, exact=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_channels_last_matches_fp32(tmp_path):
    out = _amp_losses(tmp_path / "a", "bf16", device="cuda", channels_last=True)
    ref = _amp_losses(tmp_path / "b", "fp32", device="cuda", channels_last=False)
    assert min(ref) > 0.5
    for a, b in zip(out, ref):
        assert math.isclose(a, b, rel_tol=AMP_RTOL["bf16"]), (out, ref)


# ---------------------------------------------------------------------------------------------- parallel cells
def test_parallel_sampler_gives_each_cell_its_own_paths():
    space = SearchSpace.load("dna_mini")
    par = PathSampler(space, 3, "uniform", "parallel")
    for i, b in enumerate(space.blocks):
        paths = par.paths(i, 7)
        assert [p.cell for p in paths] == list(range(len(b.cells)))
        assert [len(p.ops) for p in paths] == [c.depth for c in b.cells]
    # a cell's paths depend on (seed, block, the cell's depth and width, step) only: the same in a one-cell space
    one = PathSampler(one_cell_space(space, 1), 3, "uniform", "parallel")
    assert [par.cell_path(1, 1, s).ops for s in range(50)] == [one.cell_path(1, 0, s).ops for s in range(50)]
    # fair within a cell: in every cycle of K steps each op of each layer exactly once
    fair = PathSampler(space, 3, "fair", "parallel")
    k = len(space.blocks[1].ops)
    for cycle in range(3):
        paths = [fair.cell_path(1, 1, cycle * k + t) for t in range(k)]
        for layer in range(3):
            assert sorted(p.ops[layer] for p in paths) == list(range(k))
    assert PathSampler(space, 3).paths(1, 5) == [PathSampler(space, 3)(1, 5)]  # shared: the one path
    with pytest.raises(ValueError, match="cells"):
        PathSampler(space, 3, "uniform", "both")


@pytest.mark.parametrize("sampling", ["uniform", "fair"])
def test_parallel_cell_trains_like_a_supernet_of_that_cell_alone(tmp_path, sampling):
    """distill(cells='parallel'): after N steps every cell's weights (with block 0's stem of that cell) equal those of a
    supernet that holds only that cell, trained with the same seeds on the same batches."""
    full, teacher = _models(0, cell_stems=True)
    singles = [full.extract_cell(c) for c in (0, 1)]  # the initial weights of each cell (and its stem)
    res = distill(full, teacher, _Batches(n=3), tmp_path / "full", epochs=2, seed=5, sampling=sampling,
                  cells="parallel", **FAST)
    assert res["cell_steps"] == [[6] * len(b.cells) for b in full.space.blocks]
    logged = __import__("json").loads((tmp_path / "full" / "distill" / "cell_steps.json").read_text())
    assert logged == {"cells": "parallel", "steps": {"block0": {"d1w16": 6, "d2w16": 6},
                                                     "block1": {"d2w24": 6, "d3w24": 6}, "block2": {"d3w32": 6},
                                                     "block3": {"d1w48": 6, "d2w48": 6}}}
    for cell, single in enumerate(singles):
        distill(single, teacher, _Batches(n=3), tmp_path / f"cell{cell}", epochs=2, seed=5, sampling=sampling,
                cells="parallel", **FAST)
        trained = full.extract_cell(cell).state_dict()
        for k, v in single.state_dict().items():
            torch.testing.assert_close(v, trained[k], rtol=0, atol=1e-6, msg=k)


def test_extract_cell_copies_that_cell_and_its_stem():
    full, _ = _models(0, cell_stems=True)
    one = full.extract_cell(1)
    assert [len(b.cells) for b in one.space.blocks] == [1] * full.num_blocks
    assert [b.cells[0].label for b in one.space.blocks] == ["d2w16", "d3w24", "d3w32", "d2w48"]
    assert torch.equal(one.blocks[0].stems[0].conv_stem.weight, full.blocks[0].stems[1].conv_stem.weight)
    assert torch.equal(one.op(1, 0, 2, 3).conv_pw.weight, full.op(1, 1, 2, 3).conv_pw.weight)
    assert torch.equal(one.op(2, 0, 0, 1).conv_pw.weight, full.op(2, 0, 0, 1).conv_pw.weight)  # one-cell block
    shared, _ = _models(0)  # a shared stem is copied into the one-cell supernet's stem
    assert torch.equal(shared.extract_cell(0).blocks[0].stems[0].bn1.weight, shared.blocks[0].stem.bn1.weight)


def test_parallel_needs_a_stem_per_cell_and_shared_counts_steps(tmp_path):
    supernet, teacher = _models(0)
    with pytest.raises(ValueError, match="cell_stems=True"):
        distill(supernet, teacher, _Batches(n=2), tmp_path / "p", epochs=1, cells="parallel", **FAST)
    res = distill(supernet, teacher, _Batches(n=4), tmp_path / "s", epochs=1, seed=2, **FAST)
    sampler = PathSampler(supernet.space, 2)
    want = [[sum(sampler(i, s).cell == c for s in range(4)) for c in range(len(b.cells))]
            for i, b in enumerate(supernet.space.blocks)]
    assert res["cell_steps"] == want and all(sum(row) == 4 for row in want)


def test_parallel_supernet_loads_rates_and_inherits_per_cell_stems(tmp_path):
    from dna_fast import models
    from dna_fast.rating import rate_block, rate_block_naive

    supernet, teacher = _models(0, cell_stems=True)
    distill(supernet, teacher, _Batches(n=2), tmp_path, epochs=1, cells="parallel", **FAST)
    loaded = load_supernet(tmp_path)
    assert loaded.cell_stems and loaded.blocks[0].stem is None and len(loaded.blocks[0].stems) == 2
    _assert_same(loaded, supernet.eval())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 32, 32, generator=g)
    with torch.no_grad():
        t = teacher.eval()(x, upto=1)[0]
    fast = rate_block(loaded, 0, [(x, t)], calib=[x])
    ref = rate_block_naive(loaded, 0, [(x, t)], calib=[x])
    torch.testing.assert_close(torch.tensor(fast["loss"].to_numpy()), torch.tensor(ref["loss"].to_numpy()),
                               rtol=1e-4, atol=1e-7)
    space = loaded.space
    choices = [space.candidates(i)[-1] for i in range(space.num_blocks)]  # block 0: a candidate of cell 1
    child = models.build(space, choices, num_classes=10)
    models.inherit_weights(child, loaded, choices)
    torch.testing.assert_close(child.conv_stem.weight, loaded.blocks[0].stems[1].conv_stem.weight)
