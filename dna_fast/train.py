"""``python -m dna_fast.train``: the DNA pipeline from one run config.

Stages, in order (each reads only what the earlier ones wrote to the run directory, so each resumes or re-runs
alone): ``teacher`` (train the small teacher, or check and score the given one), ``distill`` (block-wise
distillation of the supernet), ``rate`` (every candidate of every block), ``search`` (exact search under the
budget), ``retrain`` (the found architecture, the random controls, or ``model=...``), ``evaluate`` (top-1 / top-5,
then ``summary.json`` and ``report.md``).

Bad input (unknown config key, wrong type, missing data path or checkpoint, a stage whose input the run directory
lacks, a damaged checkpoint or rating table) stops with one message and exit code 2, before anything is written or
without changing what was.

This module is the command line (:func:`build_parser`, :func:`main`, the exit codes). Each stage is a module of
:mod:`dna_fast.stages` (its inputs, outputs and resume check); the runner that orders, checks and resumes them is
:mod:`dna_fast.stages._runner`. Their names stay importable from here.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ._io import DamagedFileError
from .config import ConfigError, RunConfig, builtin_run_config, load_config
from .stages._context import _NEEDS, Context, StageInputError, _Need, stage_status  # noqa: F401
from .stages._runner import _RUNNERS, ALL_STAGES, STAGES, check_inputs, parse_stages, run  # noqa: F401
from .stages.distill import distill_augment, stage_distill, supernet_done, supernet_epochs  # noqa: F401
from .stages.evaluate import stage_evaluate  # noqa: F401
from .stages.rank_check import stage_rank_check  # noqa: F401
from .stages.rate import ratings_done, stage_rate  # noqa: F401
from .stages.retrain import random_controls, retrain_entries, retrain_plan, stage_retrain  # noqa: F401
from .stages.search import found_architecture, search_done, stage_search  # noqa: F401
from .stages.teacher import build_teacher, stage_teacher, teacher_checkpoint  # noqa: F401

__all__ = ["ALL_STAGES", "STAGES", "main", "run", "StageInputError", "stage_status"]

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # the run could not finish: a stage's library is missing, the disk is full


def _data_fallback(cfg: RunConfig, run_dir_given: bool, log: Callable[[str], None]) -> None:
    """``data.backend=fashion_mnist`` without its files and with ``data.fallback`` set: use the fallback backend.

    The message says how to get Fashion-MNIST. Unless the run dir was given, the fallback run goes to
    ``<run_dir>-digits`` (``-<fallback>``) so that it never resumes (or is resumed by) a Fashion-MNIST run.
    """
    d = cfg.data
    if d.backend != "fashion_mnist" or not d.fallback or d.fallback == "fashion_mnist":
        return
    from .data.fashion_mnist import find_fashion_mnist

    try:
        find_fashion_mnist(d.root)
        return
    except FileNotFoundError as e:
        why = str(e)
    d.backend, d.root = d.fallback, None
    if not run_dir_given:
        cfg.run_dir = f"{cfg.run_dir}-{'digits' if d.fallback == 'embedded' else d.fallback}"
    log(f"{why}\n-> this run uses data.backend={d.fallback} instead (run dir {cfg.run_dir})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dna_fast.train",
        description=(
            "Run the DNA pipeline (block-wise distillation NAS) from one YAML config. With no arguments: the embedded "
            "default (digits 32x32, dna_mini space; teacher, distill, rate, search under a MACs budget, retrain the "
            "found architecture and 3 random controls, evaluate) in runs/embedded, ending with a table, "
            "report.md and summary.json."
        ),
        epilog=(
            "stages: teacher (train the small teacher / score the given one), distill (supernet, block-wise), rate "
            "(every candidate of every block -> ratings/block{i}.parquet), search (exact, under search.budget -> "
            "search/results.json), retrain (found architecture + control.num_random random ones, or model=NAME), "
            "evaluate (top-1/top-5 raw and EMA; summary.json, report.md), rank_check (only when asked for or "
            "rank_check.enabled: blocks and networks trained alone vs the ratings -> rank_check/results.json). Each "
            "stage resumes from what --run-dir holds.\n\nexamples:\n"
            "  python -m dna_fast.train\n"
            "  python -m dna_fast.train --config configs/runs/imagenet_dna.yaml data.root=/data/imagenet\n"
            "  python -m dna_fast.train --run-dir runs/x --stages search search.budget=macs=20M\n"
            "  python -m dna_fast.train --stages evaluate model=dna_a checkpoint=dna_a.pth data.root=/data/imagenet "
            "data.backend=torchvision\n"
            "  torchrun --nproc_per_node=8 -m dna_fast.train --config configs/runs/imagenet_dna.yaml ...\n\n"
            "Exit codes: 0 done, 1 not finished (a stage's library is missing, the disk is full, a loss became NaN: "
            "what was written stays), 2 bad input (a bad config, a missing or damaged input file: nothing in the run "
            "dir is changed)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="run config YAML (default: the packaged configs/runs/embedded.yaml)")
    p.add_argument("--run-dir", help="run directory (default: the config's run_dir)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(ALL_STAGES)} (default: {','.join(STAGES)}"
                   ", and rank_check when rank_check.enabled; always run in this order)")
    p.add_argument("--info", action="store_true", help="print dna_fast.backend_info() and the stage status, then exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. distill.epochs=2 search.budget=macs=40M device=cpu")
    return p


def print_info(log: Callable[[str], None] = print) -> None:
    from . import backend_info

    for k, v in backend_info().items():
        log(f"{k}: {v}")
    for st in STAGES:
        why = stage_status(st)
        log(f"stage {st}: {'ready' if why is None else 'missing (' + why + ')'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.info:
        print_info()
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
        stages = parse_stages(args.stages)
        if args.stages is None and cfg.rank_check.enabled:
            stages.append("rank_check")
        _data_fallback(cfg, run_dir_given=bool(args.run_dir), log=lambda s: print(s, flush=True))
        run_dir = Path(args.run_dir or cfg.run_dir)
        if args.run_dir:
            cfg.run_dir = str(run_dir)
        if args.config is None and not args.run_dir:
            print(f"embedded default: {builtin_run_config('embedded')} -> {run_dir}", flush=True)
        res = run(cfg, run_dir, stages, log=lambda s: print(s, flush=True))
    except (ConfigError, StageInputError, FileNotFoundError, DamagedFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except FloatingPointError as e:  # a diverged stage (NaN / inf loss): its last checkpoint is kept
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # a data error from the loaders is bad input too
        from .data import DataError

        if isinstance(e, DataError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    return 0 if not res["missing"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
