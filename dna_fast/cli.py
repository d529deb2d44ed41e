"""``dna-fast``: the pipeline stages as subcommands.

    dna-fast info
    dna-fast distill  --run-dir DIR [--config FILE] [key=value ...]
    dna-fast rate     --run-dir DIR [--config FILE] [key=value ...]
    dna-fast search   --run-dir DIR --budget macs=400M [--top-k 5] [key=value ...]
    dna-fast retrain  --run-dir DIR [--model dna_a] [key=value ...]
    dna-fast evaluate --run-dir DIR [--model dna_a --checkpoint PATH] [key=value ...]
    dna-fast rank-check --run-dir DIR [--analyze-only] [key=value ...]

Each subcommand is ``python -m dna_fast.train --stages <stage>``: the same config, checks and exit codes. With a
``--run-dir`` that already holds a ``config.yaml`` and no ``--config``, that config is used, so the later stages of
a run need only the run directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import train

__all__ = ["main"]

_HELP = {
    "teacher": "train the small teacher (teacher.train=true) or score the given one",
    "distill": "block-wise distillation of the supernet",
    "rate": "rate every candidate of every block (ratings/block{i}.parquet)",
    "search": "exact search under a budget (search/results.json, pareto.png)",
    "retrain": "retrain the found architecture and the random controls, or --model",
    "evaluate": "top-1 / top-5 of the retrained models, or of --model with --checkpoint",
    "rank_check": "do the ratings rank like stand-alone training? blocks and networks trained alone, Kendall tau / "
                  "Spearman rho with bootstrap intervals, found vs random (rank_check/results.json)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dna-fast", description="DNA: block-wise supervised NAS, stage by stage.")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{info,teacher,distill,rate,search,retrain,evaluate,rank-check}")
    sub.add_parser("info", help="print dna_fast.backend_info() and which stages are available")
    for st in train.ALL_STAGES:
        s = sub.add_parser(st.replace("_", "-"), help=_HELP[st])
        s.add_argument("--run-dir", required=True, help="the run directory")
        s.add_argument("--config", help="run config YAML (default: RUN_DIR/config.yaml if present, else embedded)")
        if st == "search":
            s.add_argument("--budget", help="e.g. macs=400M or macs=400M,params=5e6 (sets search.budget)")
            s.add_argument("--top-k", type=int, help="architectures kept (sets search.top_k)")
        if st in ("retrain", "evaluate"):
            s.add_argument("--model", help="a timm model name (dna_a..dna_d, ...) instead of the search result")
        if st == "evaluate":
            s.add_argument("--checkpoint", help="weights of --model to evaluate")
        if st == "rank_check":
            s.add_argument("--analyze-only", action="store_true",
                           help="train nothing: rebuild the results from the finished units (rank_check.analyze_only)")
        s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return train.main(["--info"])
    config = args.config
    if config is None and (Path(args.run_dir) / "config.yaml").is_file():
        config = str(Path(args.run_dir) / "config.yaml")
    overrides = list(args.overrides)
    if getattr(args, "budget", None):
        overrides.append(f"search.budget={args.budget}")
    if getattr(args, "top_k", None) is not None:
        overrides.append(f"search.top_k={args.top_k}")
    if getattr(args, "model", None):
        overrides.append(f"model={args.model}")
    if getattr(args, "checkpoint", None):
        overrides.append(f"checkpoint={args.checkpoint}")
    if getattr(args, "analyze_only", False):
        overrides.append("rank_check.analyze_only=true")
    argv2 = ["--run-dir", args.run_dir, "--stages", args.command.replace("-", "_")]
    if config:
        argv2 += ["--config", config]
    return train.main(argv2 + overrides)


if __name__ == "__main__":
    sys.exit(main())
