#!/bin/bash
# The paper's Table 2 in miniature on the embedded tiny world (CPU, about 20-30 minutes on 2 cores):
# Baseline, NaivePrune (p=0.9, r=0) and DualSpeed (p=0.9, r=0.1) trained with the same recipe and seed, each
# evaluated under normal and pruned inference. Prints a Markdown table; saves OUT/table2.{md,json}.
# Finished variants are reused on a re-run (pass --force to retrain). Extra arguments go to playground.table2.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tiny_env.sh train
python -m playground.table2 --out "${OUT:-checkpoints/table2}" "$@"
