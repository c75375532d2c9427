#!/usr/bin/env bash
# Copy the small outputs of an experiment folder (tables, stats, per-case CSVs, histories, metrics,
# tuning logs and plots, pictures; never model weights or predictions) into a folder to commit, e.g.
#   bash bench/collect_results.sh runs/lumbar_baseline docs/results/lumbar_binary
set -euo pipefail
src=${1:?usage: collect_results.sh RUN_DIR DEST}
dest=${2:?usage: collect_results.sh RUN_DIR DEST}
mkdir -p "$dest"
cd "$src"
find . -maxdepth 1 -type f \( -name 'summary.*' -o -name 'stats.csv' -o -name 'folds.json' -o -name 'experiment.json' \) \
  -exec cp --parents {} "$OLDPWD/$dest" \;
find . -mindepth 2 -maxdepth 3 -type f \( -path '*/fold*/metrics.json' -o -path '*/fold*/cases.csv' \
  -o -path '*/fold*/history.csv' -o -path '*/fold*/params.csv' -o -path '*/fold*/weights.csv' \
  -o -path '*/fold*/tuning.json' -o -path '*/tuning.png' -o -path '*/pictures/*.png' \) \
  -not -path './cache/*' -not -path './data/*' \
  -exec cp --parents {} "$OLDPWD/$dest" \;
