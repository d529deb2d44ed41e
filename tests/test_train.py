"""``python -m dna_fast.train`` and ``dna-fast``: end to end on a tiny config, resume, bad input (exit 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dna_fast import cli, train

REPO = Path(__file__).resolve().parents[1]

# the embedded run, shrunk: a few steps per stage, one random control
TINY = [
    "threads=1", "data.batch_size=32", "data.val_batch_size=180",
    "teacher.epochs=1", "distill.epochs=2", "distill.max_steps_per_epoch=3",
    "rate.num_batches=1", "rate.calib_batches=1",
    "search.budget=macs=3M", "search.top_k=2",
    "retrain.epochs=2", "retrain.max_steps=4", "control.num_random=1", "rank_check.enabled=false",
]


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.stat().st_size) for p in d.rglob("*")}


def _main(argv, capsys) -> tuple[int, str, str]:
    rc = train.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _all_stages_ready() -> bool:
    return all(train.stage_status(s) is None for s in train.STAGES)


needs_pipeline = pytest.mark.skipif(not _all_stages_ready(), reason="a stage library is not in the package yet")


# ---------------------------------------------------------------------------------------------- help, info
def test_help_and_info(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--config", "--run-dir", "--stages", "--info", "key=value", *train.STAGES):
        assert word in out
    rc, out, _ = _main(["--info"], capsys)
    import dna_fast

    assert rc == 0
    for k, v in dna_fast.backend_info().items():
        assert f"{k}: {v}" in out
    assert "stage distill:" in out


def test_console_script_info_and_help(capsys):
    assert cli.main(["info"]) == 0
    assert "cpu_ops:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["search", "--help"])
    assert "--budget" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- bad input
BAD = [
    (["distill.epoch=1"], "unknown config key 'distill.epoch'"),
    (["distill.epochs=many"], "'distill.epochs': expected an integer"),
    (["retrain.amp=maybe"], "'retrain.amp': expected true/false"),
    (["--stages", "teacher", "data.backend=torchvision", "data.root=/no/such/folder"], "data.root"),
    (["--stages", "teacher", "data.backend=torchvision"], "needs data.root"),
    (["--stages", "search"], "stage search needs"),
    (["--stages", "retrain"], "stage retrain needs"),
    (["--stages", "evaluate"], "stage evaluate needs"),
    (["--stages", "distill", "teacher.train=false", "teacher.checkpoint=/no/teacher.pth"], "teacher.checkpoint"),
    (["--stages", "distill", "teacher.train=false"], "no teacher weights"),
    (["--stages", "distill"], "needs the trained teacher"),
    (["--stages", "evaluate", "model=not_a_model"], "not a timm model"),
    (["--stages", "evaluate", "model=dna_a", "checkpoint=/no/such.pth"], "does not exist"),
    (["--stages", "bogus"], "unknown stage"),
    (["--config", "/no/such/config.yaml"], "not found"),
    (["space=no_such_space"], "'space'"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[b[1] for b in BAD])
@pytest.mark.parametrize("existing", [False, True], ids=["empty_dir", "run_dir_with_files"])
def test_bad_input_exits_2_and_leaves_run_dir_alone(tmp_path, capsys, args, message, existing):
    run_dir = tmp_path / "run"
    if existing:
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("space: dna_mini\n")
        (run_dir / "notes.txt").write_text("keep me")
    before = _snapshot(run_dir)
    rc, out, err = _main(["--run-dir", run_dir, *args], capsys)
    assert rc == 2, (out, err)
    assert message in err and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(run_dir) == before


def test_run_dir_of_another_space_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("space: dna\n")
    before = _snapshot(run_dir)
    rc, _, err = _main(["--run-dir", run_dir, "--stages", "teacher"], capsys)
    assert rc == 2 and "made for space 'dna'" in err and _snapshot(run_dir) == before


def test_cli_bad_budget_exits_2(tmp_path, capsys):
    assert cli.main(["search", "--run-dir", str(tmp_path / "r"), "--budget", "lots"]) == 2
    assert "search.budget" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The whole tiny pipeline in one subprocess (as a user runs it)."""
    if not _all_stages_ready():
        pytest.skip("a stage library is not in the package yet")
    run_dir = tmp_path_factory.mktemp("full") / "run"
    # NOTE no time limit: speed is measured by benchmarks, a loaded CI machine must not fail a correct run
    p = subprocess.run([sys.executable, "-m", "dna_fast.train", "--run-dir", str(run_dir), *TINY],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    return run_dir, p.stdout


@needs_pipeline
def test_end_to_end_tiny(full_run):
    run_dir, out = full_run
    s = json.loads((run_dir / "summary.json").read_text())
    teacher = json.loads((run_dir / "teacher/metrics.json").read_text())
    assert s["teacher_acc"] == teacher["acc"]
    found_eval = json.loads((run_dir / "retrain/found/eval.json").read_text())
    assert s["found"]["acc"] == found_eval["acc"] == found_eval["ema"]["top1"]
    results = json.loads((run_dir / "search/results.json").read_text())
    best = results["budgets"][0]["results"][0]
    assert s["found"]["arch_def"] == best["arch_def"] and s["found"]["macs"] == best["costs"]["macs"]
    assert s["found"]["macs"] <= 3e6
    # the found model's real cost matches the summary
    from dna_fast import cost, models

    m = models.build("dna_mini", s["found"]["choices"], num_classes=10)
    real = cost.measure(m, 32)
    assert (real["macs"], real["params"]) == (s["found"]["macs"], s["found"]["params"])
    ctrl = s["random_control"]
    assert len(ctrl["accs"]) == 1 and ctrl["mean"] == pytest.approx(sum(ctrl["accs"]) / len(ctrl["accs"]))
    a = ctrl["archs"][0]
    assert abs(a["macs"] - s["found"]["macs"]) <= 0.05 * s["found"]["macs"] and a["arch_def"] != s["found"]["arch_def"]
    report = (run_dir / "report.md").read_text()
    assert "search/pareto.png" in report and (run_dir / "search/pareto.png").is_file()
    assert f"{s['found']['acc']:.2f} %" in report and "## Search" in report
    for line in ("teacher", "found", "random (mean)"):
        assert line in out
    assert f"{s['found']['acc']:.2f} %" in out
    assert (run_dir / "config.yaml").is_file()


@needs_pipeline
def test_retrain_inherit_starts_from_the_supernet(full_run, tmp_path, capsys):
    """retrain.inherit=true: the found architecture starts from the distilled supernet's weights of its path (lr 0
    keeps them, so the checkpoint shows exactly what training started from)."""
    import shutil

    from dna_fast import models
    from dna_fast.distill import load_supernet

    run_dir, _ = full_run
    d = tmp_path / "inherit"
    for rel in ("config.yaml", "checkpoints/supernet_last.pt", "search/results.json"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, d / rel)
    rc, out, err = _main(["--run-dir", d, "--stages", "retrain", *TINY, "retrain.inherit=true", "retrain.lr_per_256=0",
                          "retrain.epochs=1", "retrain.max_steps=1", "retrain.ema_decay=0", "control.num_random=0"],
                         capsys)
    assert rc == 0, out + err
    found = json.loads((d / "retrain" / "plan.json").read_text())["found"]
    child = models.build("dna_mini", found["choices"], num_classes=10)
    scratch = {k: v.clone() for k, v in child.state_dict().items()}
    rep = models.inherit_weights(child, load_supernet(d, "dna_mini"), found["choices"])
    assert f"inherited {len(rep.copied)} tensors" in out
    got = torch.load(d / "retrain" / "found" / "last.pth", weights_only=True)["model"]
    params = [k for k in rep.copied if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) > 20
    for k in params:
        assert torch.equal(got[k], child.state_dict()[k]), k
    assert any(not torch.equal(got[k], scratch[k]) for k in params)  # not what a fresh model starts from


@pytest.mark.slow
@needs_pipeline
def test_stage_by_stage_equals_full_run(full_run, tmp_path, capsys):
    """Each stage run alone (a fresh start per stage, as after an interruption) gives the full run's results."""
    run_dir, _ = full_run
    step_dir = tmp_path / "steps"
    for st in train.STAGES:
        rc, out, err = _main(["--run-dir", step_dir, "--stages", st, *TINY], capsys)
        assert rc == 0, out + err
    a = json.loads((run_dir / "summary.json").read_text())
    b = json.loads((step_dir / "summary.json").read_text())
    for k in ("teacher_acc", "found", "random_control"):
        assert a[k] == b[k], k
    # a rerun of a finished run trains nothing again and changes no result
    before = {p: p.read_bytes() for p in step_dir.rglob("*.json") if p.name != "summary.json"}
    rc, out, _ = _main(["--run-dir", step_dir, *TINY], capsys)
    assert rc == 0 and "done before" in out
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow
@needs_pipeline
@pytest.mark.parametrize("stage, marker", [
    ("distill", "checkpoints/supernet_last.pt"),
    ("retrain", "retrain/found/last.pth"),
])
def test_kill_during_stage_then_resume(full_run, tmp_path, stage, marker):
    """SIGKILL while a stage runs (once it has checkpointed); the rerun resumes and ends with the uninterrupted
    run's results."""
    run_dir, _ = full_run
    kill_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "dna_fast.train", "--run-dir", str(kill_dir), *TINY,
            "distill.checkpoint_every_steps=1", "retrain.checkpoint_every=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = kill_dir / marker
    while not ck.exists() and p.poll() is None:  # no deadline: a loaded machine is slow, not wrong
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ck.exists(), f"{stage} wrote no checkpoint (the run ended first)"
    assert not (kill_dir / "summary.json").exists(), "the kill came after the run had finished"
    if stage == "distill":
        done = torch.load(ck, weights_only=True)
        assert (done["epoch"], done["step"]) < (2, 0), "the kill came after distill had finished"
    q = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert q.returncode == 0, q.stdout + q.stderr
    a = json.loads((run_dir / "summary.json").read_text())
    b = json.loads((kill_dir / "summary.json").read_text())
    for k in ("teacher_acc", "found", "random_control"):
        assert a[k] == b[k], k


# ---------------------------------------------------------------------------------------------- evaluate a model
def test_evaluate_named_model_from_checkpoint(tmp_path, capsys):
    import timm

    import dna_fast.models  # noqa: F401  (registers dna_a..d)
    from dna_fast.data import build_loader

    torch.manual_seed(0)
    m = timm.create_model("dna_a", num_classes=10).eval()
    ck = tmp_path / "dna_a.pth"
    torch.save({"state_dict": m.state_dict()}, ck)
    run_dir = tmp_path / "run"
    rc, out, err = _main(["--run-dir", run_dir, "--stages", "evaluate", "model=dna_a", f"checkpoint={ck}",
                          "threads=1", "retrain.channels_last=false", "data.image_size=32",
                          "data.backend=embedded"], capsys)  # the digits: same on every machine
    assert rc == 0, out + err
    res = json.loads((run_dir / "evaluate/dna_a.json").read_text())
    # plain reference on the same images
    loader = build_loader(backend="embedded", split="val", batch_size=360, image_size=32)
    with torch.no_grad():
        correct = sum(int((m(x).argmax(1) == y).sum()) for x, y in loader)
    assert res["n"] == 360 and res["top1"] == pytest.approx(100 * correct / 360)
    assert "[evaluate] dna_a: top-1" in out


def test_missing_stage_library_is_reported_not_faked(tmp_path, capsys, monkeypatch):
    """Until a stage's library lands the runner says so, skips what depends on it and prints no results."""
    import numpy as np

    from dna_fast.rating import rating_table
    from dna_fast.space import SearchSpace

    run_dir = tmp_path / "run"
    sp = SearchSpace.load("dna_mini")
    (run_dir / "ratings").mkdir(parents=True)
    for i in range(sp.num_blocks):  # stand-in rating tables: only the runner's bookkeeping is under test
        rating_table(sp, i, np.ones(sp.num_candidates(i)), 1, 1.0, (32, 32)).to_parquet(
            run_dir / "ratings" / f"block{i}.parquet")
    monkeypatch.setitem(train._NEEDS, "search", (train._Need("dna_fast.no_such_module", ("run_search_stage",)),))
    rc, out, _ = _main(["--run-dir", run_dir, "--stages", "search,retrain,evaluate"], capsys)
    assert rc == train.EXIT_FAILED == 1  # not finished: a script or CI job must not take it for a complete run
    assert "[search] missing: dna_fast.no_such_module is not implemented yet" in out
    for st in ("retrain", "evaluate"):
        assert f"[{st}] skipped: needs the output of stage search" in out
    assert "pipeline incomplete" in out and not (run_dir / "summary.json").exists()
    assert not (run_dir / "search").exists() and not (run_dir / "retrain").exists()


# ---------------------------------------------------------------------------------------------- damaged inputs
def _damaged_one_line(err: str, path: Path) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{str(path)!r} cannot be read" in err, err


def test_damaged_checkpoint_to_evaluate_exits_2(tmp_path, capsys):
    ck = tmp_path / "dna_a.pth"
    ck.write_bytes(b"\x80\x04 truncated")
    rc, out, err = _main(["--run-dir", tmp_path / "run", "--stages", "evaluate", "model=dna_a", f"checkpoint={ck}",
                          "threads=1", "data.image_size=32"], capsys)
    assert rc == 2, out + err
    _damaged_one_line(err, ck)
    assert ck.read_bytes() == b"\x80\x04 truncated"


def test_damaged_supernet_checkpoint_stops_rate_before_writing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    ck = run_dir / "checkpoints" / "supernet_last.pt"
    ck.parent.mkdir(parents=True)
    torch.save({"epoch": 2}, ck)
    ck.write_bytes(ck.read_bytes()[:40])  # truncated by a crash of the copy that brought it here
    before = _snapshot(run_dir)
    rc, out, err = _main(["--run-dir", run_dir, "--stages", "rate", "teacher.train=false",
                          "teacher.allow_random_teacher=true", "threads=1"], capsys)
    assert rc == 2, out + err
    _damaged_one_line(err, ck)
    assert _snapshot(run_dir) == before


def test_damaged_rating_table_stops_search(tmp_path, capsys):
    import numpy as np

    from dna_fast.rating import rating_table
    from dna_fast.space import SearchSpace

    run_dir = tmp_path / "run"
    sp = SearchSpace.load("dna_mini")
    (run_dir / "ratings").mkdir(parents=True)
    for i in range(sp.num_blocks):
        rating_table(sp, i, np.arange(sp.num_candidates(i)) + 1.0, 1, 1.0, (32, 32)).to_parquet(
            run_dir / "ratings" / f"block{i}.parquet")
    bad = run_dir / "ratings" / "block1.parquet"
    bad.write_bytes(bad.read_bytes()[:-100])
    kept = {p.name: p.read_bytes() for p in (run_dir / "ratings").iterdir()}
    rc, out, err = _main(["--run-dir", run_dir, "--stages", "search", "search.budget=macs=3M"], capsys)
    assert rc == 2, out + err
    _damaged_one_line(err, bad)
    assert "rate stage" in err  # the fix
    assert {p.name: p.read_bytes() for p in (run_dir / "ratings").iterdir()} == kept
    assert not (run_dir / "search").exists()


@pytest.mark.parametrize("exc", [OSError(28, "no space left on the device while writing 'x/last.pth'"),
                                 FloatingPointError("retrain: loss is nan at step 3")], ids=["disk_full", "nan"])
def test_unfinished_run_exits_1_with_one_line(tmp_path, capsys, monkeypatch, exc):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(train, "run", boom)
    rc, _, err = _main(["--run-dir", tmp_path / "run", "--stages", "search"], capsys)
    assert rc == train.EXIT_FAILED == 1
    assert err == f"error: {exc}\n"
