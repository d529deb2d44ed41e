"""Retraining recipe, evaluation and resume (dna_fast.retrain)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dna_fast.config import RetrainConfig
from dna_fast.retrain import (
    build_optimizer,
    effective_ema_decay,
    evaluate,
    load_weights,
    lr_at,
    save_atomic,
    train_model,
)


class ListLoader:
    """A tiny in-memory loader with the BatchLoader interface (len, set_epoch, batch_size), seeded per epoch."""

    def __init__(self, n=48, batch_size=16, classes=7, size=8, seed=0, shuffle=True, fail_at_epoch=None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)
        self.x += self.y[:, None, None, None].float() * 0.3  # learnable
        self.batch_size, self.shuffle, self.epoch, self.fail_at_epoch = batch_size, shuffle, 0, fail_at_epoch
        self.num_classes = classes

    def __len__(self):
        return len(self.x) // self.batch_size

    def set_epoch(self, e):
        self.epoch = e

    def __iter__(self):
        if self.fail_at_epoch is not None and self.epoch == self.fail_at_epoch:
            raise KeyboardInterrupt("simulated kill")
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.epoch)) if self.shuffle \
            else torch.arange(len(self.x))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def tiny_model(classes=7):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def test_lr_schedule_warmup_then_step_decay():
    base, spe = 0.1, 10
    lrs = [lr_at(s, spe, base, warmup_epochs=2, decay_epochs=3, decay_rate=0.5) for s in range(100)]
    # warm-up: linear over 20 steps, reaching base at the last warm-up step
    assert lrs[0] == pytest.approx(base / 20) and lrs[19] == pytest.approx(base)
    assert all(b > a for a, b in zip(lrs[:19], lrs[1:20]))
    # after warm-up: base * 0.5 ** floor(epoch / 3), epoch = step / steps_per_epoch
    for s in range(20, 100):
        assert lrs[s] == pytest.approx(base * 0.5 ** math.floor((s / spe) / 3))


def test_paper_schedule_values():
    # the paper's numbers: 0.016 per 256 images at a global batch of 4096 -> 0.256; x0.963 every 3 epochs
    base = 0.016 * 4096 / 256
    spe = 312
    assert lr_at(5 * spe, spe, base, 5, 3, 0.963) == pytest.approx(base * 0.963)  # epoch 5: one decay (epoch 3)
    assert lr_at(300 * spe, spe, base, 5, 3, 0.963) == pytest.approx(base * 0.963 ** 100)


def test_effective_ema_decay():
    cfg = RetrainConfig(ema_decay=0.9998, ema_scale=True)
    assert effective_ema_decay(cfg, 100) == pytest.approx(0.9)
    assert effective_ema_decay(cfg, 10**7) == pytest.approx(0.9998)
    assert effective_ema_decay(cfg, 4) == 0.5
    assert effective_ema_decay(RetrainConfig(ema_decay=0.9998, ema_scale=False), 100) == 0.9998
    assert effective_ema_decay(RetrainConfig(ema_decay=0.0), 100) == 0.0


def test_optimizer_is_tf_rmsprop_scaled_by_global_batch():
    from timm.optim import RMSpropTF

    m = tiny_model()
    opt = build_optimizer(m, RetrainConfig(lr_per_256=0.016, weight_decay=1e-5), global_batch=1024)
    assert isinstance(opt, RMSpropTF)
    g_decay, g_no = opt.param_groups
    assert g_decay["lr"] == pytest.approx(0.064) and g_decay["eps"] == 1e-3 and g_decay["momentum"] == 0.9
    assert g_decay["alpha"] == 0.9 and g_decay["weight_decay"] == 1e-5 and g_no["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in g_decay["params"]) and all(p.ndim <= 1 for p in g_no["params"])
    assert len(g_decay["params"]) + len(g_no["params"]) == len(list(m.parameters()))


def test_evaluate_matches_plain_reference():
    loader = ListLoader(n=50, batch_size=16, shuffle=False)
    m = tiny_model().eval()
    res = evaluate(m, loader, "cpu")
    with torch.no_grad():
        logits = m(loader.x[:48])
    y = loader.y[:48]
    top5 = logits.topk(5, 1).indices
    assert res["n"] == 48
    assert res["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert res["top5"] == pytest.approx(100 * (top5 == y[:, None]).any(1).float().mean().item())
    assert res["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def _cfg(**kw):
    base = dict(epochs=3, lr_per_256=0.5, warmup_epochs=1, decay_epochs=1, decay_rate=0.9, ema_decay=0.9,
                ema_scale=False, amp=False, channels_last=False, dropout=0.0, drop_path=0.0)
    base.update(kw)
    return RetrainConfig(**base)


def test_train_learns_and_writes_outputs(tmp_path):
    m = tiny_model()
    res = train_model(m, ListLoader(), ListLoader(shuffle=False), tmp_path, cfg=_cfg(epochs=6), device="cpu",
                      meta={"arch": "tiny"}, log=lambda s: None)
    assert res["top1"] > 100 / 7 * 1.5  # well above chance
    assert res["acc"] == res["ema_top1"] and res["acc_source"] == "ema" and res["arch"] == "tiny"
    assert (tmp_path / "last.pth").is_file() and (tmp_path / "log.csv").read_text().count("\n") == 7
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == res["top1"]
    # a finished run is not trained again
    again = train_model(tiny_model(), ListLoader(), ListLoader(shuffle=False), tmp_path, cfg=_cfg(epochs=6),
                        device="cpu", log=lambda s: None)
    assert again["top1"] == res["top1"]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = _cfg(epochs=3, dropout=0.2)  # dropout: the RNG state must be restored too
    m_full = tiny_model()
    full = train_model(m_full, ListLoader(), ListLoader(shuffle=False), tmp_path / "full", cfg=cfg, device="cpu",
                       log=lambda s: None)
    m = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        train_model(m, ListLoader(fail_at_epoch=2), ListLoader(shuffle=False), tmp_path / "cut", cfg=cfg,
                    device="cpu", log=lambda s: None)
    ck = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert ck["epoch"] == 2 and not (tmp_path / "cut" / "metrics.json").exists()
    torch.manual_seed(123)  # a fresh process: the RNG state must come from the checkpoint
    m2 = tiny_model()
    res = train_model(m2, ListLoader(), ListLoader(shuffle=False), tmp_path / "cut", cfg=cfg, device="cpu",
                      log=lambda s: None)
    for a, b in zip(m_full.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert res["top1"] == full["top1"] and res["ema_top1"] == full["ema_top1"]
    assert (tmp_path / "cut" / "log.csv").read_text().count("\n") == 4  # header + 3 epochs, no repeats


def test_max_steps_stops_early(tmp_path):
    res = train_model(tiny_model(), ListLoader(), ListLoader(shuffle=False), tmp_path, cfg=_cfg(max_steps=4),
                      device="cpu", log=lambda s: None)
    assert res["steps"] == 4 and res["epochs"] == 2


def test_nan_loss_stops_with_clear_error(tmp_path):
    loader = ListLoader()
    loader.x[:] = float("nan")
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train_model(tiny_model(), loader, ListLoader(shuffle=False), tmp_path, cfg=_cfg(), device="cpu",
                    log=lambda s: None)


def test_load_weights_formats(tmp_path):
    m = tiny_model()
    sd = m.state_dict()
    save_atomic({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pth")
    save_atomic({"model": sd, "ema": {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}},
                tmp_path / "ck.pth")
    for k, v in load_weights(tmp_path / "ddp.pth").items():
        torch.testing.assert_close(v, sd[k])
    ema = load_weights(tmp_path / "ck.pth")
    raw = load_weights(tmp_path / "ck.pth", prefer_ema=False)
    torch.testing.assert_close(ema["0.weight"], sd["0.weight"] + 1)
    torch.testing.assert_close(raw["0.weight"], sd["0.weight"])
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "nope.pth")


def test_found_architecture_with_drop_path_and_channels_last(tmp_path):
    from dna_fast import models
    from dna_fast.space import SearchSpace

    sp = SearchSpace.load("dna_mini")
    choices = [sp.candidates(i)[0] for i in range(sp.num_blocks)]
    from timm.layers import DropPath

    m = models.build(sp, choices, num_classes=7, drop_rate=0.2, drop_path_rate=0.2)
    assert any(isinstance(x, DropPath) and x.drop_prob > 0 for x in m.modules())
    val = ListLoader(size=16, shuffle=False)
    res = train_model(m, ListLoader(size=16), val, tmp_path,
                      cfg=_cfg(epochs=1, channels_last=True, drop_path=0.2, dropout=0.2), device="cpu",
                      log=lambda s: None)
    assert res["steps"] == 3
    # the reported accuracy is the trained model's (in eval mode: no dropout / drop-path), by a plain forward
    with torch.no_grad():
        logits = m.eval()(val.x)
    assert res["top1"] == pytest.approx(100 * (logits.argmax(1) == val.y).float().mean().item())
    assert res["loss"] == pytest.approx(nn.functional.cross_entropy(logits, val.y).item(), rel=1e-4)
    x = val.x[:4].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # in train mode drop-path and dropout are live: two passes differ
        assert not torch.equal(m.train()(x), m(x))


def test_ddp_two_ranks_gloo(tmp_path):
    """torchrun with 2 CPU ranks: trains, rank 0 writes, the evaluate stage reproduces the retrain's accuracy."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else sys.executable, *([] if torchrun.exists() else
           ["-m", "torch.distributed.run"]), "--nproc_per_node=2", "-m", "dna_fast.train", "--run-dir", str(run_dir),
           "--stages", "retrain,evaluate", "model=dna_mini_teacher", "retrain.epochs=1", "retrain.max_steps=3",
           "data.batch_size=32", "threads=1", "data.backend=embedded"]  # the digits on every machine
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stdout + p.stderr
    m = json.loads((run_dir / "retrain/dna_mini_teacher/metrics.json").read_text())
    e = json.loads((run_dir / "retrain/dna_mini_teacher/eval.json").read_text())
    assert m["global_batch"] == 64 and m["steps"] == 3 and m["n_val"] == 360
    assert e["raw"]["top1"] == pytest.approx(m["top1"]) and e["ema"]["top1"] == pytest.approx(m["ema_top1"])
    assert p.stdout.count("[retrain] dna_mini_teacher: val top-1") == 1  # one rank reports


# ---------------------------------------------------------------------------------------------- damaged files, disk
def test_damaged_checkpoint_is_refused_and_kept(tmp_path):
    from dna_fast._io import DamagedFileError

    ck = tmp_path / "last.pth"
    ck.write_bytes(b"\x80\x02 half a pickle")
    with pytest.raises(DamagedFileError, match=r"retrain checkpoint .*last.pth' cannot be read.*delete it"):
        train_model(tiny_model(), ListLoader(), ListLoader(shuffle=False), tmp_path, cfg=_cfg(), device="cpu",
                    log=lambda s: None)
    assert ck.read_bytes() == b"\x80\x02 half a pickle" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
    with pytest.raises(DamagedFileError, match="last.pth"):
        load_weights(ck)


def test_disk_full_during_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    import errno

    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's checkpoint: the disk is full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match=r"no space left on the device while writing .*last.pth.*intact") as e:
        train_model(tiny_model(), ListLoader(), ListLoader(shuffle=False), tmp_path, cfg=_cfg(epochs=3),
                    device="cpu", log=lambda s: None)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1  # epoch 1's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "log.csv"]  # no temp file, no metrics
    # space again: the run resumes from epoch 1 and ends like an uninterrupted one
    res = train_model(tiny_model(), ListLoader(), ListLoader(shuffle=False), tmp_path, cfg=_cfg(epochs=3),
                      device="cpu", log=lambda s: None)
    ref = train_model(tiny_model(), ListLoader(), ListLoader(shuffle=False), tmp_path / "ref", cfg=_cfg(epochs=3),
                      device="cpu", log=lambda s: None)
    assert res["top1"] == ref["top1"] and res["ema_top1"] == ref["ema_top1"] and res["steps"] == ref["steps"]


# ---------------------------------------------------------------------------------------------- EMA, smoothing
def test_ema_is_the_average_of_the_weights_after_each_step(tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    m, d = tiny_model(), 0.6
    snaps = []
    hook = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: snaps.append({k: v.detach().clone() for k, v in m.named_parameters()}))
    try:
        res = train_model(m, ListLoader(), ListLoader(shuffle=False), tmp_path, cfg=_cfg(epochs=2, ema_decay=d),
                          device="cpu", log=lambda s: None)
    finally:
        hook.remove()
    assert len(snaps) == res["steps"] == 6 and res["ema_decay"] == d
    ema = snaps[0]  # the first update copies the weights (timm counts updates from 1), then decay d per step
    for s in snaps[1:]:
        ema = {k: d * ema[k] + (1 - d) * s[k] for k in ema}
    ck = torch.load(tmp_path / "last.pth", weights_only=True)
    for k, v in ema.items():
        torch.testing.assert_close(ck["ema"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(ck["model"][k], snaps[-1][k], rtol=0, atol=0)
    assert any((ck["ema"][k] - ck["model"][k]).abs().max() > 1e-3 for k in ema)  # the EMA is not the raw weights
    ema_model = tiny_model()
    ema_model.load_state_dict(ck["ema"])
    assert res["ema_top1"] == evaluate(ema_model, ListLoader(shuffle=False), "cpu")["top1"] == res["acc"]


def _plain_model(classes=7):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes))


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_training_loss_is_label_smoothed_cross_entropy(tmp_path, smoothing):
    # lr 0: the weights stay, so the logged epoch loss is the plain smoothed cross-entropy of the initial model
    train_model(_plain_model(), ListLoader(), ListLoader(shuffle=False), tmp_path,
                cfg=_cfg(epochs=1, lr_per_256=0.0, ema_decay=0.0, label_smoothing=smoothing), device="cpu",
                log=lambda s: None)
    import csv

    with open(tmp_path / "log.csv") as f:
        logged = float(next(csv.DictReader(f))["train_loss"])
    ref, loader = _plain_model(), ListLoader()
    loader.set_epoch(0)
    with torch.no_grad():
        pairs = [(ref(x), y) for x, y in loader]
    want = sum(nn.functional.cross_entropy(lo, y, label_smoothing=smoothing).item() for lo, y in pairs) / len(pairs)
    other = sum(nn.functional.cross_entropy(lo, y, label_smoothing=0.3 - smoothing).item() for lo, y in pairs)
    assert logged == pytest.approx(want, rel=1e-6)
    assert abs(other / len(pairs) - want) > 1e-3  # a thousand times the tolerance: a wrong smoothing fails


# ---------------------------------------------------------------------------------------------- DDP
class _Shard(ListLoader):
    """Rank ``rank``'s contiguous half of every batch of a ListLoader (batch_size per rank, as under DDP)."""

    def __init__(self, rank, world, **kw):
        super().__init__(**kw)
        self.rank, self.world, self.full = rank, world, self.batch_size
        self.batch_size = self.full // world

    def __len__(self):
        return len(self.x) // self.full

    def __iter__(self):
        per = self.batch_size
        self.batch_size = self.full
        try:
            for x, y in super().__iter__():
                yield x[self.rank * per:(self.rank + 1) * per], y[self.rank * per:(self.rank + 1) * per]
        finally:
            self.batch_size = per


def _ddp_retrain(rank, world, init, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different RNG per rank: the weights must still come out as one process's
        train_model(_plain_model(), _Shard(rank, world), _Shard(rank, world, shuffle=False), out,
                    cfg=_cfg(epochs=2), device="cpu", log=lambda s: None)
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_ranks_equal_one_process(tmp_path):
    """2 ranks with half of each batch == 1 process with the whole batch (GroupNorm: per-sample statistics): the same
    weights, EMA and accuracy, the learning rate scaled by the global batch."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_retrain, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path / "ddp")), nprocs=2, join=True)
    one = train_model(_plain_model(), ListLoader(), ListLoader(shuffle=False), tmp_path / "one", cfg=_cfg(epochs=2),
                      device="cpu", log=lambda s: None)
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert two["global_batch"] == one["global_batch"] == 16 and two["lr"] == pytest.approx(one["lr"])
    assert two["n_val"] == one["n_val"] == 48 and two["steps"] == one["steps"] == 6
    a = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pth", weights_only=True)
    init = _plain_model().state_dict()
    for part in ("model", "ema"):
        for k, v in b[part].items():
            torch.testing.assert_close(a[part][k], v, rtol=1e-4, atol=1e-5, msg=f"{part} {k}")
            if part == "model" and k == "0.weight":
                assert (v - init[k]).abs().max() > 1e-2  # training moved it far more than the tolerance
    assert two["top1"] == pytest.approx(one["top1"]) and two["ema_top1"] == pytest.approx(one["ema_top1"])
