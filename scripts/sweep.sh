#!/bin/bash
# The paper's Fig. 5 in miniature on the embedded tiny world: accuracy vs training speed-up for pruning ratios
# {0.5, 0.7, 0.9, 0.95} (r = 0.1) and slow-mode ratios {0, 0.05, 0.1, 0.2, 0.5} (p = 0.9), plus the Baseline.
# Saves OUT/sweep.json and OUT/sweep.png (needs matplotlib: pip install -e ".[plot]").
# Nine training runs with the quickstart's recipe, about 6 minutes each on 2 CPU cores; --pruning-ratios /
# --slow-ratios pick other grids and --max-sft-samples N shortens every run. Finished runs are reused on a re-run
# (pass --force to retrain); with OUT set to a Table-2 seed folder (e.g. checkpoints/table2/seed-42) its Baseline
# and DualSpeed runs serve as the sweep's Baseline and p = 0.9, r = 0.1 point. Extra arguments go to playground.sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tiny_env.sh train,plot
python -m playground.sweep --out "${OUT:-checkpoints/sweep}" "$@"
