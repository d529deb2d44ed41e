"""The authors' DNA protocol as switches (issue 15): each switch changes what it should and nothing else.

teacher.bn (BN batch statistics used or frozen; the teacher recalibrated at rating), rate.metric (loss / rel_loss /
rel_l1 against a hand computation; the engine equal to the reference; the abs-error sums of linear_sq_err),
rate.calib_source (where the calibration batches come from), search.fixed_blocks (excluded from the search, counted
in the base cost), the distillation options (weight decay on >= 2-dim weights, lr offset, augmentation), and the
ImageNet configs.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import perturb_bn as _perturb_bn
from torch import nn

from dna_fast import _rating_engine, ops
from dna_fast.config import ConfigError, load_config
from dna_fast.distill import BatchAugment, BlockTrainer, distill
from dna_fast.rating import _collect, rate_block, rate_block_naive, rating_table, rel_l1_from_sums
from dna_fast.search import fix_blocks, search, search_reference, synthetic_tables, with_metric
from dna_fast.space import SearchSpace
from dna_fast.supernet import Supernet
from dna_fast.teacher import Teacher

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test on one thread (conftest's ``one_thread``)."""


@pytest.fixture()
def teacher():
    torch.manual_seed(1)
    t = Teacher("dna_mini_teacher", "dna_mini", allow_random_teacher=True)
    _perturb_bn(t.model, seed=3)
    return t


def _bn_state(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in module.named_buffers() if "running" in n]


# ---------------------------------------------------------------------------------------------- configs
def test_defaults_are_this_projects_and_switches_are_checked():
    cfg = load_config()
    assert (cfg.teacher.bn, cfg.rate.metric, cfg.rate.calib_source, cfg.search.fixed_blocks) == ("eval", "loss",
                                                                                                  "val", {})
    d = cfg.distill
    assert (d.weight_decay_1d, d.lr_epoch_offset, d.color_jitter, d.random_erasing, d.amp) == (True, 0, 0.0, 0.0,
                                                                                               "auto")
    cfg = load_config(None, ["search.fixed_blocks={3: 'd1w48:ir_k3_e6_se0.25'}", "rate.metric=rel_l1"])
    assert cfg.search.fixed_blocks == {3: "d1w48:ir_k3_e6_se0.25"} and cfg.rate.metric == "rel_l1"
    for bad, msg in [("teacher.bn=frozen", "teacher.bn"), ("rate.metric=mae", "rate.metric"),
                     ("rate.calib_source=test", "rate.calib_source"), ("search.fixed_blocks=5", "fixed_blocks"),
                     ("distill.random_erasing=1.5", "random_erasing")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="rate.calib_batches >= 1"):
        load_config(None, ["teacher.bn=train", "rate.calib_batches=0"])


def test_imagenet_configs_follow_the_authors_and_name_the_fast_deviations():
    a = load_config(REPO / "configs" / "runs" / "imagenet_dna.yaml")
    assert a.teacher.bn == "train" and a.rate.metric == "rel_l1" and a.rate.calib_source == "train"
    assert a.rate.calib_batches == 1 and a.rate.num_batches * a.rate.batch_size == 19 * 64 * 8
    assert a.search.fixed_blocks == {5: "d1w320:ir_k3_e6_se0.25"}
    d = a.distill
    assert (d.color_jitter, d.random_erasing, a.data.random_interpolation, a.data.backend) == (0.4, 0.5, True,
                                                                                            "torchvision")
    assert (d.weight_decay, d.weight_decay_1d, d.lr_decay, d.lr_epoch_offset, d.amp) == (1e-4, False, 0.9, 1, "fp32")
    assert d.cells == "parallel"  # each depth trained as its own supernet, with the full budget
    r = a.retrain
    assert (r.epochs, r.batch_size, r.weight_decay, r.color_jitter) == (500, 128, 1e-4, 0.06)
    f = load_config(REPO / "configs" / "runs" / "imagenet_dna_fast.yaml")
    assert (f.teacher.bn, f.rate.metric, f.rate.calib_source, f.search.fixed_blocks) == ("eval", "loss", "val", {})
    text = (REPO / "configs" / "runs" / "imagenet_dna_fast.yaml").read_text()
    for key in ("bn: eval", "metric: loss", "calib_source: val", "fixed_blocks: {}"):
        assert key in text, key
    # the packaged embedded run is unchanged: this project's protocol
    assert load_config().teacher.bn == "eval"


# ---------------------------------------------------------------------------------------------- teacher.bn
def test_teacher_bn_train_uses_batch_statistics_eval_freezes_them(teacher):
    x = torch.randn(6, 3, 32, 32)
    frozen = copy.deepcopy(teacher).train(True)  # train_bn=False: train() leaves it in eval mode
    before = _bn_state(frozen.model)
    y_eval = frozen(x)
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(frozen.model)))
    assert not any(m.training for m in frozen.model.modules())

    live = Teacher(copy.deepcopy(teacher.model), "dna_mini", train_bn=True).train(True)
    bns = [m for m in live.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training for m in bns)
    # the stages have no dropout / drop-path to switch on: train mode changes the BNs only
    assert not any(isinstance(m, nn.Dropout) or "DropPath" in type(m).__name__ for m in live.model.blocks.modules())
    y_train = live(x)
    # the first BN normalizes with the batch's own statistics
    stem = live.model.conv_stem(x)
    bn1 = copy.deepcopy(live.model.bn1).train()
    bn1.reset_running_stats()
    ref = bn1(stem)
    torch.testing.assert_close(live.model.bn1(stem), ref)  # batch statistics (train mode)
    assert not torch.allclose(y_train[0], y_eval[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, _bn_state(live.model)))  # running stats move
    live.train(False)
    assert not any(m.training for m in live.model.modules())


def _tiny_loader(n: int = 2, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.zeros(batch, dtype=torch.long)) for _ in range(n)]


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_distill_trains_with_the_teacher_bn_it_is_given(teacher, tmp_path, bn):
    t = Teacher(copy.deepcopy(teacher.model), "dna_mini", train_bn=bn == "train")
    before = _bn_state(t.model)
    sn = Supernet("dna_mini")
    distill(sn, t, _tiny_loader(), tmp_path / bn, epochs=1, device="cpu", progress=False, tensorboard=False)
    moved = any(not torch.equal(a, b) for a, b in zip(before, _bn_state(t.model)))
    assert moved == (bn == "train")
    ck = torch.load(tmp_path / bn / "checkpoints" / "supernet_last.pt", weights_only=True)
    assert ck["config"]["teacher_bn"] == bn


def test_teacher_recalibration_is_that_batch_statistics(teacher):
    x = torch.randn(8, 3, 32, 32)
    t = copy.deepcopy(teacher)
    pairs = t.recalibrate_bn([x])
    stem = t.model.conv_stem(x)
    torch.testing.assert_close(t.model.bn1.running_mean, stem.mean((0, 2, 3)))
    torch.testing.assert_close(t.model.bn1.running_var, stem.var((0, 2, 3), unbiased=True))
    assert not any(m.training for m in t.model.modules())
    # the returned calibration features are those of a train-mode BN forward
    ref = Teacher(copy.deepcopy(teacher.model), "dna_mini", train_bn=True).train(True)
    for (a, b), (c, d) in zip(pairs[0], ref.block_pairs(x)):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, d)


def test_collect_recalibrates_a_copy_of_the_teacher_and_rates_with_it(teacher):
    loader = _tiny_loader(3, seed=1)
    state = copy.deepcopy(teacher.model.state_dict())
    pairs, calib = _collect(teacher, loader, [0, 2], 2, 1, torch.device("cpu"), recalibrate_teacher=True)
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in state.items())  # caller's teacher intact
    ref = copy.deepcopy(teacher)
    cal = ref.recalibrate_bn([loader[0][0]])
    for i in (0, 2):
        torch.testing.assert_close(calib[i][0], cal[0][i][0])
        for j, (x, t) in enumerate(pairs[i]):
            want = ref.block_pairs(loader[j + 1][0])[i]
            torch.testing.assert_close(t, want[1])
            torch.testing.assert_close(x, want[0])
    # teacher.bn=eval: the stored statistics
    pairs_e, _ = _collect(teacher, loader, [2], 2, 1, torch.device("cpu"))
    torch.testing.assert_close(pairs_e[2][0][1], teacher.block_pairs(loader[1][0])[2][1])
    assert not torch.allclose(pairs_e[2][0][1], pairs[2][0][1])


# ---------------------------------------------------------------------------------------------- calib_source
def test_calib_source_train_takes_the_calibration_batches_from_the_other_loader(teacher):
    val, train = _tiny_loader(3, seed=1), _tiny_loader(2, seed=2)
    pairs, calib = _collect(teacher, val, [1], 3, 1, torch.device("cpu"), calib_loader=iter(train))
    torch.testing.assert_close(calib[1][0], teacher.block_pairs(train[0][0])[1][0])
    assert len(pairs[1]) == 3  # every val batch is rated
    torch.testing.assert_close(pairs[1][0][1], teacher.block_pairs(val[0][0])[1][1])
    pairs_v, calib_v = _collect(teacher, val, [1], 2, 1, torch.device("cpu"))
    torch.testing.assert_close(calib_v[1][0], teacher.block_pairs(val[0][0])[1][0])
    torch.testing.assert_close(pairs_v[1][0][1], teacher.block_pairs(val[1][0])[1][1])


# ---------------------------------------------------------------------------------------------- metrics
def _pairs(space, i, sizes, seed, calib=0):
    g = torch.Generator().manual_seed(seed)
    (ci, hi, wi), (co, ho, wo) = space.block_io_shapes(32)[i]
    pairs = [(torch.randn(b, ci, hi, wi, generator=g), torch.randn(b, co, ho, wo, generator=g) * 1.7 + 0.4)
             for b in sizes]
    cal = [torch.randn(5, ci, hi, wi, generator=g) for _ in range(calib)] or None
    return pairs, cal


def test_metrics_against_a_hand_computation(mini):
    i = 2
    pairs, _ = _pairs(mini.space, i, (3, 5), seed=4)
    df = rate_block_naive(mini, i, pairs)
    cand = mini.space.candidates(i)[7]
    path = nn.Sequential(*mini.path_modules(i, cand)).eval()
    with torch.no_grad():
        outs = [path(x).double() for x, _ in pairs]
    ts = [t.double() for _, t in pairs]
    sq = sum(((o - t) ** 2).sum() for o, t in zip(outs, ts))
    n = sum(t.numel() for t in ts)
    allt = torch.cat([t.reshape(-1) for t in ts])
    ratios = [((o - t).abs().mean() / (t.std() + 1e-9)) for o, t in zip(outs, ts)]
    l1 = (3 * ratios[0] + 5 * ratios[1]) / 8  # batches weighted by their images (the authors' AverageMeter)
    row = df.loc[str(cand)]
    assert row["loss"] == pytest.approx(float(sq / n), rel=1e-5)
    assert row["rel_loss"] == pytest.approx(float(sq / n / allt.var(unbiased=False)), rel=1e-5)
    assert row["rel_l1"] == pytest.approx(float(l1), rel=1e-5)
    assert list(df.columns[:3]) == ["loss", "rel_loss", "rel_l1"]


@pytest.mark.parametrize("native", [True, False], ids=["native", "plain"])
@pytest.mark.parametrize("calibrated", [False, True], ids=["stored", "calib"])
def test_engine_equals_reference_on_every_metric(mini, monkeypatch, native, calibrated):
    monkeypatch.setattr(_rating_engine, "_NATIVE", native)
    for i in (0, 3):
        pairs, cal = _pairs(mini.space, i, (4, 2), seed=10 + i, calib=1 if calibrated else 0)
        fast = rate_block(mini, i, pairs, calib=cal, chunk_size=3)
        ref = rate_block_naive(mini, i, pairs, calib=cal)
        assert list(fast.columns) == list(ref.columns)
        for col in ("loss", "rel_loss", "rel_l1"):
            np.testing.assert_allclose(fast[col].to_numpy(), ref[col].to_numpy(), rtol=2e-4, err_msg=col)


def test_rel_l1_from_sums_and_partial_candidates(mini):
    t = [torch.ones(2, 1, 2, 2), torch.arange(8.0).view(2, 1, 2, 2)]
    got = rel_l1_from_sums(np.array([[4.0, 8.0], [8.0, 0.0]]), t)
    want0 = (2 * (4 / 8 / (0 + 1e-9)) + 2 * (8 / 8 / (float(t[1].std()) + 1e-9))) / 4
    np.testing.assert_allclose(got, [want0, (2 * (8 / 8 / 1e-9) + 0) / 4])
    pairs, _ = _pairs(mini.space, 1, (2,), seed=5)
    df = rate_block(mini, 1, pairs, candidates=[0, 3])
    assert np.isfinite(df["rel_l1"].to_numpy()[[0, 3]]).all() and np.isnan(df["rel_l1"].to_numpy()[1])
    assert rating_table(mini.space, 1, np.ones(len(df)), 1, 1.0, (32, 32))["rel_l1"].isna().all()


def test_linear_sq_err_returns_squared_and_absolute_sums_per_image():
    for r, k, n, groups in ((96, 24, 16, 4), (37, 24, 16, 1), (10, 8, 5, 2), (0, 8, 16, 1)):
        x, w = torch.randn(r, k), torch.randn(k, n) * 0.2
        off, sh = torch.randn(r, n), torch.randn(n)
        gate = torch.rand(groups, k) if groups > 1 else None
        sq, ab = ops.linear_sq_err(x, w, off, sh, gate)
        assert sq.dtype == ab.dtype == torch.float64 and sq.shape == ab.shape == (groups,)
        xg = x.double() if gate is None else (x.double().view(groups, -1, k) * gate.double()[:, None]).view(r, k)
        e = (xg @ w.double() + off.double() + sh.double()).view(groups, -1, n)
        torch.testing.assert_close(sq, e.square().sum((1, 2)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ab, e.abs().sum((1, 2)), rtol=1e-5, atol=1e-5)
        ref = ops.linear_sq_err_reference(x, w, off, sh, gate)
        torch.testing.assert_close((sq, ab), ref, rtol=1e-5, atol=1e-5)
    if ops.HAS_NATIVE:
        args = (torch.randn(9, 24), torch.randn(24, 16), torch.randn(9, 16), torch.randn(16), torch.rand(3, 24))
        torch.library.opcheck(torch.ops.dna_fast.linear_sq_err, args)
        torch.library.opcheck(torch.ops.dna_fast.linear_sq_err, args[:4])


# ---------------------------------------------------------------------------------------------- search
def test_with_metric_sums_the_chosen_column_only():
    tables = synthetic_tables(layers=[1, 2, 1], seed=1)
    rng = np.random.default_rng(0)
    for t in tables:
        t["rel_loss"] = rng.random(len(t))
        t["rel_l1"] = rng.random(len(t))
    budget = {"macs": float(np.median([t["macs"].sum() / len(t) for t in tables]) * 3)}
    for metric in ("loss", "rel_loss", "rel_l1"):
        mt = with_metric(tables, metric)
        got = search(mt, budget, top_k=3)
        want = search_reference([t.assign(loss=t[metric]) for t in tables], budget, top_k=3)
        assert [a.choices for a in got] == [a.choices for a in want]
        assert got[0].loss == pytest.approx(sum(float(t[metric].loc[c]) for t, c in zip(tables, got[0].choices)))
        assert all(t["macs"].equals(o["macs"]) for t, o in zip(mt, tables))  # costs untouched
    with pytest.raises(ValueError, match="no finite 'rel_l1'"):
        with_metric([tables[0].assign(rel_l1=np.nan)], "rel_l1")


def test_fixed_blocks_are_excluded_and_counted_in_the_base_cost():
    tables = synthetic_tables(layers=[1, 1, 2, 1], seed=2)
    label = tables[3].index[5]
    fixed_macs = float(tables[3]["macs"].loc[label])
    base = {"macs": 1000.0}
    ft, fb = fix_blocks(tables, {3: label}, base)
    assert fb["macs"] == base["macs"] + fixed_macs and list(ft[3].index) == [label] and ft[3]["loss"].iloc[0] == 0
    assert all(ft[i] is tables[i] for i in range(3))
    budget = {"macs": base["macs"] + fixed_macs + float(sum(t["macs"].median() for t in tables[:3]))}
    got = search(ft, budget, top_k=4, base_cost=fb)
    # the same as searching the free blocks alone with the fixed block's cost in the budget
    free = search_reference(tables[:3], {"macs": budget["macs"] - fixed_macs}, top_k=4, base_cost=base)
    assert [a.choices[:3] for a in got] == [a.choices for a in free]
    assert all(a.choices[3] == label for a in got)
    assert [a.loss for a in got] == pytest.approx([a.loss for a in free])  # the fixed block's loss is not summed
    assert [a.costs["macs"] for a in got] == pytest.approx([a.costs["macs"] + fixed_macs for a in free])
    with pytest.raises(ValueError, match="budget is infeasible"):
        search(ft, {"macs": base["macs"] + fixed_macs + sum(t["macs"].min() for t in tables[:3]) - 1}, base_cost=fb)
    with pytest.raises(ValueError, match="not a candidate"):
        fix_blocks(tables, {1: "nope"})
    with pytest.raises(ValueError, match="out of range"):
        fix_blocks(tables, {7: label})


def test_search_stage_records_metric_and_fixed_blocks(tmp_path):
    from dna_fast.stages.search import run_search_stage

    space = SearchSpace.load("dna_mini")
    rng = np.random.default_rng(3)
    (tmp_path / "ratings").mkdir()
    for i in range(space.num_blocks):
        n = space.num_candidates(i)
        t = rating_table(space, i, rng.random(n) * 10, 10, 2.0, (32, 32), rel_l1=rng.random(n))
        t.to_parquet(tmp_path / "ratings" / f"block{i}.parquet")
    last = space.num_blocks - 1
    out = run_search_stage(tmp_path, ["macs=3M"], top_k=2, space=space, image_size=32, num_classes=10,
                           metric="rel_l1", fixed_blocks={last: "c0:0"})
    saved = json.loads((tmp_path / "search" / "results.json").read_text())
    fixed_label = str(space.candidates(last)[0])
    assert saved["metric"] == "rel_l1" and saved["fixed_blocks"] == {str(last): fixed_label}
    best = out["budgets"][0]["results"][0]
    assert best["choices"][last] == fixed_label
    tables = [pd.read_parquet(tmp_path / "ratings" / f"block{i}.parquet") for i in range(space.num_blocks)]
    assert best["loss"] == pytest.approx(sum(float(t["rel_l1"].loc[c]) for t, c in
                                             zip(tables[:last], best["choices"][:last])))


# ---------------------------------------------------------------------------------------------- distillation
def test_weight_decay_only_on_weights_with_two_dims(teacher):
    sn = Supernet("dna_mini")
    tr = BlockTrainer(sn, teacher, [1e-3] * sn.num_blocks, weight_decay=1e-4, weight_decay_1d=False)
    for i, opt in enumerate(tr.optimizers):
        decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        for p in sn.block_parameters(i):
            assert (id(p) in decayed) == (p.ndim >= 2)
    tr = BlockTrainer(sn, teacher, [1e-3] * sn.num_blocks, weight_decay=1e-4)
    assert all(g["weight_decay"] == 1e-4 for o in tr.optimizers for g in o.param_groups)


def test_lr_epoch_offset_starts_at_the_decayed_rate(teacher, tmp_path):
    rows = {}
    for offset in (0, 1):
        d = tmp_path / f"o{offset}"
        distill(Supernet("dna_mini"), teacher, _tiny_loader(1), d, epochs=2, lr=[0.01] * 4, lr_decay=0.9,
                lr_epoch_offset=offset, device="cpu", progress=False, tensorboard=False)
        log = pd.read_csv(d / "distill" / "log.csv")
        rows[offset] = log[log.block == 0].groupby("epoch")["lr"].first().tolist()
    assert rows[0] == pytest.approx([0.01, 0.009]) and rows[1] == pytest.approx([0.009, 0.0081])


def test_distill_augment_is_seeded_and_changes_only_what_it_should():
    x = torch.randn(6, 3, 16, 16) * 0.5
    assert BatchAugment()(x, 0) is x  # off: the batch as is
    jit = BatchAugment(color_jitter=0.4, seed=1)
    a, b = jit(x, 3), jit(x, 3)
    assert torch.equal(a, b) and not torch.equal(a, jit(x, 4)) and not torch.equal(a, x)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    img = a * std + mean
    assert img.min() >= -1e-5 and img.max() <= 1 + 1e-5
    er = BatchAugment(random_erasing=1.0, seed=2)
    y = er(x, 0)
    changed = (y != x).any(1)  # [N, H, W]
    for k in range(x.shape[0]):
        rows, cols = torch.nonzero(changed[k], as_tuple=True)
        assert len(rows) > 0
        box = changed[k, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.95  # one rectangle; outside it the image is unchanged
        area = box.numel() / (16 * 16)
        assert 0.015 <= area <= 0.34
    assert torch.equal(BatchAugment(random_erasing=0.0, color_jitter=0.0)(x, 1), x)


def test_distill_resume_refuses_another_protocol(teacher, tmp_path):
    distill(Supernet("dna_mini"), teacher, _tiny_loader(1), tmp_path, epochs=1, device="cpu", progress=False,
            tensorboard=False)
    with pytest.raises(ValueError, match="weight_decay_1d"):
        distill(Supernet("dna_mini"), teacher, _tiny_loader(1), tmp_path, epochs=2, device="cpu", progress=False,
                tensorboard=False, weight_decay_1d=False)


def test_dna_c_budget_admits_dna_c_under_the_authors_protocol(tmp_path):
    """On tables where DNA-c scores best, macs=<its MACs> returns it (the last block fixed, in the base cost); one
    MAC less does not: the budget table of docs/protocol.md."""
    from dna_fast import cost, models
    from dna_fast.stages.search import run_search_stage

    space = SearchSpace.load("dna")
    choices = [str(c) for c in models.dna_choices("dna_c", space)]
    macs = int(cost.network_cost(space, choices, 224, 1000)["macs"])
    assert macs == 450_138_976
    (tmp_path / "ratings").mkdir()
    for i in range(space.num_blocks):
        n = space.num_candidates(i)
        l1 = np.ones(n)
        l1[space.candidate_index(i, space.parse(i, choices[i]))] = 0.0
        rating_table(space, i, np.ones(n), 1, 1.0, (224, 224), rel_l1=l1).to_parquet(
            tmp_path / "ratings" / f"block{i}.parquet")
    kw = dict(top_k=1, space=space, image_size=224, num_classes=1000, metric="rel_l1",
              fixed_blocks={5: "d1w320:ir_k3_e6_se0.25"})
    best = run_search_stage(tmp_path, [{"macs": macs}], **kw)["budgets"][0]["results"][0]
    assert best["choices"] == choices and best["costs"]["macs"] == macs and best["loss"] == 0.0
    best = run_search_stage(tmp_path, [{"macs": macs - 1}], **kw)["budgets"][0]["results"][0]
    assert best["choices"] != choices and best["costs"]["macs"] <= macs - 1


def test_random_interpolation_picks_bicubic_for_some_crops_and_only_on_request(tmp_path):
    from PIL import Image

    from dna_fast.data import build_loader
    from dna_fast.data._folder import scan_folder
    from dna_fast.data.tv import FolderDataset, random_resized_crop_box

    (tmp_path / "train" / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    path = tmp_path / "train" / "a" / "x.png"
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
    images = scan_folder(tmp_path, "train")
    plain = FolderDataset(images, train=True, image_size=16)
    rand = FolderDataset(images, train=True, image_size=16, random_interpolation=True)
    picked = set()
    for seed in range(12):
        r = random.Random(seed)
        with Image.open(path) as im:
            im = im.convert("RGB")
            box = random_resized_crop_box(im.width, im.height, r)
            interp = Image.BICUBIC if r.random() < 0.5 else Image.BILINEAR
            want = im.resize((16, 16), interp, box=box)
            if r.random() < 0.5:
                want = want.transpose(Image.FLIP_LEFT_RIGHT)
        picked.add(interp)
        got = rand.load(str(path), seed)
        assert torch.equal(got, torch.from_numpy(np.asarray(want).copy()).permute(2, 0, 1))
    assert picked == {Image.BICUBIC, Image.BILINEAR}
    # off: bilinear always (the default pipeline unchanged)
    r = random.Random(3)
    with Image.open(path) as im:
        im = im.convert("RGB")
        want = im.resize((16, 16), Image.BILINEAR, box=random_resized_crop_box(im.width, im.height, r))
        if r.random() < 0.5:
            want = want.transpose(Image.FLIP_LEFT_RIGHT)
    assert torch.equal(plain.load(str(path), 3), torch.from_numpy(np.asarray(want).copy()).permute(2, 0, 1))
    with pytest.raises(ValueError, match="needs the torchvision backend"):
        build_loader(backend="embedded", batch_size=4, random_interpolation=True)
    with pytest.raises(ConfigError, match="data.random_interpolation"):
        load_config(None, ["data.random_interpolation=true"])


AUTHORS = ["teacher.bn=train", "rate.metric=rel_l1", "rate.calib_source=train", "rate.calib_batches=1",
           "search.fixed_blocks={3: 'd1w48:ir_k3_e6_se0.25'}", "distill.weight_decay_1d=false",
           "distill.lr_epoch_offset=1", "distill.color_jitter=0.4", "distill.random_erasing=0.5", "distill.amp=fp32"]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["ours", "authors"])
def test_embedded_run_under_both_protocols(tmp_path, capsys, protocol):
    """distill -> rate -> search of the embedded run, shrunk (a random teacher, a few steps), under each protocol."""
    from dna_fast import train

    extra = AUTHORS if protocol == "authors" else []
    args = ["--run-dir", str(tmp_path), "--stages", "distill,rate,search", "threads=1", "teacher.train=false",
            "teacher.allow_random_teacher=true", "data.batch_size=32", "distill.epochs=1",
            "distill.max_steps_per_epoch=2", "rate.batch_size=45", "rate.num_batches=1", "search.top_k=2", *extra]
    rc = train.main(args)
    assert rc == 0, capsys.readouterr()
    res = json.loads((tmp_path / "search" / "results.json").read_text())
    ck = torch.load(tmp_path / "checkpoints" / "supernet_last.pt", weights_only=True)["config"]
    table = pd.read_parquet(tmp_path / "ratings" / "block0.parquet")
    assert np.isfinite(table[["loss", "rel_loss", "rel_l1"]].to_numpy()).all()
    best = res["budgets"][0]["results"][0]
    if protocol == "authors":
        assert res["metric"] == "rel_l1" and res["fixed_blocks"] == {"3": "d1w48:ir_k3_e6_se0.25"}
        assert best["choices"][3] == "d1w48:ir_k3_e6_se0.25"
        assert (ck["teacher_bn"], ck["weight_decay_1d"], ck["lr_epoch_offset"], ck["color_jitter"]) == (
            "train", False, 1, 0.4)
    else:
        assert res["metric"] == "loss" and res["fixed_blocks"] == {}
        assert (ck["teacher_bn"], ck["weight_decay_1d"], ck["lr_epoch_offset"]) == ("eval", True, 0)
