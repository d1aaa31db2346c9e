#!/bin/bash
# The paper's Table 2 in miniature on the embedded tiny world (CPU, about 45-55 minutes on 2 cores):
# Baseline, NaivePrune (p=0.9, r=0) and DualSpeed (p=0.9, r=0.1) trained with the quickstart's recipe for two seeds,
# each evaluated under normal and pruned inference by the likelihood of every answer choice (accuracy, answer NLL,
# visual information gain, 95% intervals over seeds and questions). Prints Markdown tables; saves OUT/table2.{md,json}.
# Finished runs are reused on a re-run (pass --force to retrain). Extra arguments go to playground.table2.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tiny_env.sh train
python -m playground.table2 --out "${OUT:-checkpoints/table2}" --seeds 42 43 "$@"
