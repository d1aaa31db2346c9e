#!/bin/bash
# POPE with a LLaVA-1.5 checkpoint. Data, settings (CKPT, MODEL_PATH, MODEL_BASE, CONV_MODE, EXPERIMENT, EVAL_DIR) and
# output: docs/evaluation.md. Extra arguments go to the model runner, e.g. --pruning-ratio 0.9 --batch-size 8.
exec bash "$(dirname "$0")/../../lib/run_eval.sh" v1_5 pope "$@"
