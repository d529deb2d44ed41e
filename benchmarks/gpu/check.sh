#!/usr/bin/env bash
# One GPU check that fits in minutes (issue 19): build for sm_90 against the installed torch, backend_info(), every
# gpu-marked test, DDP over NCCL, the GPU benchmarks, compute-sanitizer on the kernel tests; each stage with its
# own time budget, never stopping at the first failure. Results: $OUT (else benchmarks/results/):
# gpu-check-<UTC time>.json / .md / .log. docs/gpu_check.md says more.
#
#   bash benchmarks/gpu/check.sh              on the GPU machine, from a plain checkout (about 6 minutes at most)
#   bash benchmarks/gpu/check.sh --dry-run    anywhere: CPU stand-ins where a GPU is needed, nothing compiled
#   bash benchmarks/gpu/check.sh --help       stages, budgets and options
#
# Python: $PYTHON if set, else the project's .venv if there is one, else python3 (the GPU machine's own torch).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$py" -m benchmarks.gpu.check --python "$py" "$@"
