#!/usr/bin/env bash
# The cells study (docs/ranking_study.md, "Ratings that beat counting MACs"): does distilling every cell as long as
# its own run (distill.cells=parallel), and distilling longer, make the ratings rank stand-alone blocks better than
# counting MACs? Every phase resumes where it stopped: rerun the same command to continue.
#
#   tools/cells_study.sh ROOT PHASE...
#     teacher            the Fashion-MNIST teacher of configs/runs/fashion_mnist.yaml (ROOT/teacher)
#     distill:V:E[:key=value,...]
#                        supernet variant V (su = shared cells, uniform; sf = shared, fair; pu = parallel, uniform;
#                        pf = parallel, fair) distilled for E epochs and rated (ROOT/V_eE); starts from V_e(E/2)'s
#                        checkpoint where it exists (lr x 0.9 per epoch does not depend on the total, so the first
#                        E/2 epochs of an E-epoch run are that run)
#     units:NAME:STEPS[:key=value,...]
#                        stand-alone units (rank_check) in ROOT/NAME, block_steps=STEPS; the keys are rank_check
#                        overrides (the same on every rerun: they make the plan); ratings/ of ROOT/su_e4 are the
#                        plan's own
#     analyze:NAME:STEPS[:key=value,...]
#                        the same without training: rebuild ROOT/NAME/rank_check/{results.json,units.csv,report.md}
#                        with the ratings of every variant present scored too (rank_check.compare)
#     calibrate:V:UNITS[:EXCLUDE]
#                        ROOT/V_cal: V's ratings with each cell's rating mapped onto the stand-alone scale by a line
#                        fitted on the units of ROOT/UNITS (rank_check.fit_cell_calibration: only the cells move
#                        against each other; the plan's own seed only, as rank_check.loo_calibrated scores it;
#                        UNITS=A+B: the mean stand-alone loss of unit sets A and B, same candidates, own seeds),
#                        leaving out the candidates of the plan ROOT/EXCLUDE/rank_check/plan.json, or with
#                        EXCLUDE=random-SEED-M those of the random draw rank_check.block_selection=random,
#                        rank_check.seed=SEED, block_candidates=M (a held-out draw, known before its plan is made)
# The development units: DEV=rank_check.block_candidates_from=docs/ranking_study/fashion_mnist/plan.json, the 64
# candidates of the first study, e.g.  tools/cells_study.sh runs/cells units:dev1248:1248:$DEV
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
ROOT=${1:?usage: tools/cells_study.sh ROOT PHASE...}
shift
C=configs/runs/fashion_mnist.yaml
train() { "$PY" -m dna_fast.train --config "$C" "$@"; }
say() { echo "[cells] $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg): $*"; }

seed_dir() {  # seed_dir DIR: a run dir that starts from the study's teacher
  mkdir -p "$1/checkpoints" "$1/teacher"
  [ -e "$1/checkpoints/teacher.pth" ] || cp "$ROOT/teacher/checkpoints/teacher.pth" "$1/checkpoints/"
  [ -e "$1/teacher/metrics.json" ] || cp "$ROOT/teacher/teacher/metrics.json" "$1/teacher/"
}

# the variants' ratings are raw and the unit sets score the tables they are given (the config's default calibrates
# since the study chose that recipe, and a rank_check run would then wait for a calibration; the study calibrates
# with its own units, phase calibrate)
RAW="rate.cell_calibration=0"

variant_args() {
  case "$1" in
    su) echo "distill.cells=shared distill.sampling=uniform $RAW" ;;
    sf) echo "distill.cells=shared distill.sampling=fair $RAW" ;;
    pu) echo "distill.cells=parallel distill.sampling=uniform $RAW" ;;
    pf) echo "distill.cells=parallel distill.sampling=fair $RAW" ;;
    *) echo "unknown variant $1 (su, sf, pu, pf)" >&2; exit 2 ;;
  esac
}

compare_arg() {  # every rated variant dir: label=dir,...
  local out="" d
  for d in "$ROOT"/*_e*; do
    [ -e "$d/ratings/block0.parquet" ] && out="$out${out:+,}$(basename "$d")=$d"
  done
  echo "$out"
}

for phase in "$@"; do
  IFS=: read -r kind a b c <<< "$phase"
  case "$kind" in
    teacher)
      say "teacher"
      train --run-dir "$ROOT/teacher" --stages teacher
      ;;
    distill)
      v=$a; e=$b; R="$ROOT/${v}_e$e"; prev="$ROOT/${v}_e$((e / 2))"
      seed_dir "$R"
      if [ ! -e "$R/checkpoints/supernet_last.pt" ] && [ -e "$prev/checkpoints/supernet_last.pt" ] && [ $((e % 2)) = 0 ]; then
        cp "$prev/checkpoints/supernet_last.pt" "$R/checkpoints/"
        mkdir -p "$R/distill" && cp "$prev/distill/log.csv" "$R/distill/" && cp "$prev/distill/times.csv" "$R/distill/" 2>/dev/null || true
      fi
      say "distill $v for $e epochs in $R ($(variant_args "$v"))"
      mkdir -p "$R/distill"
      # shellcheck disable=SC2046
      /usr/bin/time -f "%e %U %S" -o "$R/distill/.time" "$PY" -m dna_fast.train --config "$C" --run-dir "$R" \
        --stages distill distill.epochs="$e" $(variant_args "$v") $(echo "${c:-}" | tr ',' ' ')
      read -r wall user sys < "$R/distill/.time"
      [ -e "$R/distill/times.csv" ] || echo "epochs_to,wall_s,cpu_s,loadavg_start,date" > "$R/distill/times.csv"
      echo "$e,$wall,$(echo "$user + $sys" | bc),$(cut -d' ' -f1 /proc/loadavg),$(date -u '+%F %T')" >> "$R/distill/times.csv"
      # shellcheck disable=SC2046
      train --run-dir "$R" --stages rate distill.epochs="$e" $(variant_args "$v") $(echo "${c:-}" | tr ',' ' ')
      ;;
    units|analyze)
      name=$a; steps=$b; extra=${c:-}; R="$ROOT/$name"
      seed_dir "$R"
      [ -e "$R/ratings" ] || cp -r "$ROOT/su_e4/ratings" "$R/ratings"
      only=false; [ "$kind" = analyze ] && only=true
      say "$kind $name at $steps steps ($extra)"
      # shellcheck disable=SC2046
      train --run-dir "$R" --stages rank_check "$RAW" rank_check.block_steps="$steps" rank_check.networks=0 \
        rank_check.found_random=0 rank_check.analyze_only=$only rank_check.compare="$([ $only = true ] && compare_arg)" \
        $(echo "$extra" | tr ',' ' ')
      ;;
    calibrate)
      v=$a; units=$b; exclude=${c:-}; R="$ROOT/${v}_cal"
      say "calibrate $v on $units (excluding ${exclude:-nothing})"
      case "$exclude" in random-*|"") ex=$exclude ;; *) ex=$ROOT/$exclude/rank_check/plan.json ;; esac
      csvs=$(echo "$units" | tr '+' '\n' | sed "s|.*|$ROOT/&/rank_check/units.csv|" | paste -sd+)
      "$PY" - "$ROOT/$v" "$csvs" "$R" "$ex" <<'PYEOF'
import json, sys
from pathlib import Path
import pandas as pd
from dna_fast import rank_check as rk
from dna_fast.rating import load_ratings
from dna_fast.space import SearchSpace
src, units_csv, out, exclude = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
label = Path(src).name
import yaml
space = SearchSpace.load(yaml.safe_load((Path(units_csv.split("+")[0]).parent.parent / "config.yaml").read_text())["space"])
def planned(csv):  # one unit set's planned candidates at its plan's own seed
    u = pd.read_csv(csv)
    own_seed = json.loads((Path(csv).parent / "plan.json").read_text())["seed"]
    return u[u["roles"].fillna("").str.contains("planned") & (u["seed"] == own_seed)].reset_index(drop=True)
sets = [planned(c) for c in units_csv.split("+")]
units = sets[0]
if len(sets) > 1:  # the mean stand-alone loss over the sets (the same candidates at other training seeds)
    key = list(zip(units["block"], units["candidate"]))
    others = [s.set_index(["block", "candidate"])["val_loss"].loc[key].to_numpy() for s in sets[1:]]
    units["val_loss"] = (units["val_loss"].to_numpy() + sum(others)) / len(sets)
drop = set()
if exclude.startswith("random-"):
    _, dseed, m = exclude.split("-")
    drop = {(i, c) for i in range(space.num_blocks) for c in rk.select_random_candidates(space, i, int(m), int(dseed))}
elif exclude:
    held = json.loads(Path(exclude).read_text())
    drop = {(int(b), e["candidate"]) for b, es in held["blocks"].items() for e in es}
keep = units[[(int(b), c) not in drop for b, c in zip(units["block"], units["candidate"])]]
# a cell left with fewer than 2 units (all its candidates drawn: the 4 of a depth-1 cell) keeps its own units, the
# same candidates in other trainings; calibration.json names those cells
short = [k for k, g in units.groupby(["block", "cell"]) if len(keep[(keep["block"] == k[0]) & (keep["cell"] == k[1])]) < 2]
for b, c in short:
    keep = pd.concat([keep, units[(units["block"] == b) & (units["cell"] == c)]]).drop_duplicates()
units = keep
col = f"{label}:loss"
fit = rk.fit_cell_calibration(units.rename(columns={col: "rating"}), "rating")
tables = rk.calibrate_ratings(space, load_ratings(src), fit, "loss")
(out / "ratings").mkdir(parents=True, exist_ok=True)
for i, t in enumerate(tables):
    t.to_parquet(out / "ratings" / f"block{i}.parquet")
(out / "calibration.json").write_text(json.dumps({
    "source": src, "units": units_csv, "excluded_plan": exclude or None, "units_used": len(units),
    "excluded": sorted(f"{b}:{c}" for b, c in drop),
    "cells_fitted_on_excluded_candidates": [f"{b}.{c}" for b, c in short],
    "lines": {f"{b}.{c}": ab for (b, c), ab in fit.items()}}, indent=2))
print(f"[cells] {out}: {len(units)} units, lines {fit}")
PYEOF
      ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
say "done: $*"
