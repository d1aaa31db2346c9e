#!/bin/bash
# The paper's Table 2 in miniature on the embedded tiny world (CPU, about 20-30 minutes on 2 cores):
# Baseline, NaivePrune (p=0.9, r=0) and DualSpeed (p=0.9, r=0.1) trained with the same recipe and seed, each
# evaluated under normal and pruned inference. Prints a Markdown table; saves OUT/table2.{md,json}.
# Finished variants are reused on a re-run (pass --force to retrain). Extra arguments go to playground.table2.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_INSTALL:-}" ] || python -m pip install --quiet torch==2.13.0
[ -n "${SKIP_INSTALL:-}" ] || python -m pip install --quiet -e ".[train]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m playground.table2 --out "${OUT:-checkpoints/table2}" "$@"
