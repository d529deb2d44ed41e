#!/usr/bin/env bash
# The Fashion-MNIST ranking study (docs/ranking_study.md) from one command: the pipeline up to the search, a second
# supernet distilled with fair sampling from the same teacher (its ratings are scored on the same stand-alone units),
# then the ranking check. Every step resumes: rerun the same command to continue a stopped study.
#   tools/ranking_study.sh [RUN_DIR] [key=value ...]     (default RUN_DIR: runs/fashion_mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
R=${1:-runs/fashion_mnist}
shift || true
F="${R}_fair"
C=configs/runs/fashion_mnist.yaml
# the settings the study was published with (the config's defaults have since become the cells study's recipe)
PIN="distill.cells=shared distill.epochs=4 rate.cell_calibration=0"  # word-split on use; the caller's overrides win
train() { "$PY" -m dna_fast.train --config "$C" "$@"; }
echo "[study] start $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
train --run-dir "$R" --stages teacher,distill,rate,search $PIN "$@"
mkdir -p "$F/checkpoints" "$F/teacher"
[ -e "$F/checkpoints/teacher.pth" ] || cp "$R/checkpoints/teacher.pth" "$F/checkpoints/"
[ -e "$F/teacher/metrics.json" ] || cp "$R/teacher/metrics.json" "$F/teacher/"
train --run-dir "$F" --stages distill,rate $PIN distill.sampling=fair "$@"
train --run-dir "$R" --stages rank_check $PIN "rank_check.compare=fair=$F" "$@"
echo "[study] end $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
