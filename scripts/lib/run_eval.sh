#!/bin/bash
# Runs one benchmark: scripts/lib/run_eval.sh VARIANT BENCHMARK [model-runner args...], VARIANT v1_5 or next.
# Called by scripts/{v1_5,next}/eval/BENCHMARK.sh; settings in scripts/lib/eval_common.sh, data in docs/evaluation.md.
set -euo pipefail
VARIANT="$1"
BENCHMARK="$2"
shift 2
EXTRA_ARGS=("$@")
cd "$(dirname "$0")/../.."
source scripts/lib/eval_common.sh
echo "== $BENCHMARK: $MODEL_PATH${MODEL_BASE:+ (base $MODEL_BASE)}, conv $CONV_MODE, results as $EXPERIMENT" \
    "${EXTRA_ARGS[*]:+(runner args: ${EXTRA_ARGS[*]})}"
source "scripts/lib/eval/$BENCHMARK.sh"
