#!/usr/bin/env bash
# Every grid of the lumbar study, one after the other, resumable: rerun it after an interruption (a new
# session) and only the missing runs train. Each grid's small outputs are copied to docs/results/ when
# it finishes (never model weights). The fixed rows of the greedy and adaptive grids are the baseline's
# runs: they are copied in before those grids start, and reused because their recorded configs are equal.
#   nohup nice -n 10 bash bench/study_grids.sh > runs/study_grids.log 2>&1 &
# In a fresh checkout, first put the committed runs back: cp -r docs/results/lumbar_binary runs/lumbar_baseline
# (and likewise for the other grids); their metrics.json files record their configs.
set -uo pipefail
cd "$(dirname "$0")/.."
SPINELOSS=${SPINELOSS:-.venv/bin/spineloss}

grid() {  # grid CONFIG RUN_DIR RESULTS_DIR: run, copy the small outputs, write the HTML report beside them
    "$SPINELOSS" experiment "$1" --out "$2" && bash bench/collect_results.sh "$2" "$3" \
        && "$SPINELOSS" report "$3" --out "$3.html" --analysis docs/results/analysis > /dev/null
}

copy_fixed() {  # copy_fixed FROM TO LOSS...: the baseline's finished runs of these losses
    local from=$1 to=$2; shift 2
    for loss in "$@"; do
        for fold in "$from/$loss"/fold*; do
            [ -f "$fold/metrics.json" ] || continue
            [ -e "$to/$loss/$(basename "$fold")" ] && continue
            mkdir -p "$to/$loss" && cp -r "$fold" "$to/$loss/"
        done
    done
}

grid configs/lumbar_baseline.toml runs/lumbar_baseline docs/results/lumbar_binary
grid configs/lumbar_levels.toml runs/lumbar_levels docs/results/lumbar_levels
copy_fixed runs/lumbar_baseline runs/lumbar_greedy dice tversky asymmetric
grid configs/lumbar_greedy.toml runs/lumbar_greedy docs/results/lumbar_greedy
copy_fixed runs/lumbar_baseline runs/lumbar_adaptive boundary hausdorff dice_ce
grid configs/lumbar_adaptive.toml runs/lumbar_adaptive docs/results/lumbar_adaptive
grid configs/cervical_greedy.toml runs/cervical_greedy docs/results/cervical_greedy
grid configs/cervical_adaptive.toml runs/cervical_adaptive docs/results/cervical_adaptive
