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
    m = models.build(sp, choices, num_classes=7, drop_rate=0.2, drop_path_rate=0.2)
    res = train_model(m, ListLoader(size=16), ListLoader(size=16, shuffle=False), tmp_path,
                      cfg=_cfg(epochs=1, channels_last=True, drop_path=0.2, dropout=0.2), device="cpu",
                      log=lambda s: None)
    assert 0.0 <= res["top1"] <= 100.0 and res["steps"] == 3


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
           "data.batch_size=32", "threads=1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stdout + p.stderr
    m = json.loads((run_dir / "retrain/dna_mini_teacher/metrics.json").read_text())
    e = json.loads((run_dir / "retrain/dna_mini_teacher/eval.json").read_text())
    assert m["global_batch"] == 64 and m["steps"] == 3 and m["n_val"] == 360
    assert e["raw"]["top1"] == pytest.approx(m["top1"]) and e["ema"]["top1"] == pytest.approx(m["ema_top1"])
    assert p.stdout.count("[retrain] dna_mini_teacher: val top-1") == 1  # one rank reports
