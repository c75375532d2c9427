#!/usr/bin/env bash
# Every grid of the lumbar study, one after the other, resumable: rerun it after an interruption (a new
# session) and only the missing runs train. Each grid's small outputs are copied to docs/results/ when
# it finishes (never model weights). The fixed rows of the greedy and adaptive grids are the baseline's
# runs: they are copied in before those grids start, and reused because their recorded configs are equal.
#   nohup nice -n 10 bash bench/study_grids.sh > runs/study_grids.log 2>&1 &
# In a fresh checkout, first put the committed runs back: cp -r docs/results/lumbar_binary runs/lumbar_baseline,
# and likewise every docs/results/<grid> to its runs/<grid> (lumbar_levels, lumbar_levels_6class*, ...): their
# metrics.json files record their configs, so they are reused. The rescores need the models of the runs they
# score (not committed) unless their own results are put back too.
set -uo pipefail
cd "$(dirname "$0")/.."
SPINELOSS=${SPINELOSS:-.venv/bin/spineloss}

publish() {  # publish RUN_DIR RESULTS_DIR: copy the small outputs, write the HTML report beside them
    bash bench/collect_results.sh "$1" "$2" \
        && "$SPINELOSS" report "$2" --out "$2.html" --analysis docs/results/analysis > /dev/null
}

grid() {  # grid CONFIG RUN_DIR RESULTS_DIR [EXPERIMENT OPTIONS]: run, then publish
    "$SPINELOSS" experiment "$1" --out "$2" "${@:4}" && publish "$2" "$3"
}

count_levels() {  # count_levels RUN_DIR OUT_DIR [RESCORE OPTIONS]: number the bodies from the sacrum
    "$SPINELOSS" rescore "$1" --out "$2" --postprocess caudal_bodies=5 --postprocess number_levels=true "${@:3}"
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
# L1-L5 (docs/results/lumbar_levels.md): the binary grid's networks with their bodies counted (the
# networks configs/lumbar_levels.toml trains); the levels network of 6 classes on four of the losses; and
# that network's arg-max and counting, for the comparison of the three level assignments
count_levels runs/lumbar_baseline runs/lumbar_levels --label-mode multiclass \
    && publish runs/lumbar_levels docs/results/lumbar_levels
grid configs/lumbar_levels_6class.toml runs/lumbar_levels_6class docs/results/lumbar_levels_6class \
    --losses ce,focal,dice,dice_ce
"$SPINELOSS" rescore runs/lumbar_levels_6class --out runs/lumbar_levels_6class_dp --postprocess 'levels="probabilities"' \
    && bash bench/collect_results.sh runs/lumbar_levels_6class_dp docs/results/lumbar_levels_6class_dp   # today's flags
"$SPINELOSS" rescore runs/lumbar_levels_6class --out runs/lumbar_levels_6class_argmax \
    && bash bench/collect_results.sh runs/lumbar_levels_6class_argmax docs/results/lumbar_levels_6class_argmax
count_levels runs/lumbar_levels_6class runs/lumbar_levels_6class_counting \
    && bash bench/collect_results.sh runs/lumbar_levels_6class_counting docs/results/lumbar_levels_6class_counting
copy_fixed runs/lumbar_baseline runs/lumbar_greedy dice tversky asymmetric
grid configs/lumbar_greedy.toml runs/lumbar_greedy docs/results/lumbar_greedy
copy_fixed runs/lumbar_baseline runs/lumbar_adaptive boundary hausdorff dice_ce
grid configs/lumbar_adaptive.toml runs/lumbar_adaptive docs/results/lumbar_adaptive
grid configs/cervical_greedy.toml runs/cervical_greedy docs/results/cervical_greedy
grid configs/cervical_adaptive.toml runs/cervical_adaptive docs/results/cervical_adaptive

# Loss learning (docs/results/learned_losses.md): each search on its proxy, its small outputs copied where
# configs/lumbar_learned.toml reads the learned files, then the learned losses on the baseline's folds
learn() {  # learn METHOD
    "$SPINELOSS" learn "$1" "configs/learn_$1.toml" --out "runs/learn_$1" || return 1
    mkdir -p "docs/results/learned/$1"
    for f in learned_loss.json formula.txt history.csv evaluations.csv learn.json fitness.png references.json; do
        [ -f "runs/learn_$1/$f" ] && cp "runs/learn_$1/$f" "docs/results/learned/$1/"
    done
    return 0
}
learn genetic && learn taylor && learn meta \
    && copy_fixed runs/lumbar_baseline runs/lumbar_learned dice dice_ce \
    && grid configs/lumbar_learned.toml runs/lumbar_learned docs/results/lumbar_learned
