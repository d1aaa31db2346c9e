#!/bin/bash
# DualSpeed stage 1: LLaVA-1.5 pretraining in fast mode (DivPrune keeps 10% of the visual tokens, plus the
# mode isolator, which is trained and saved as mode_isolator.bin beside mm_projector.bin). Same recipe and
# variables as pretrain.sh, plus PRUNING_RATIO VTP_METHOD ISOLATOR_LEN. Extra arguments are appended.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/dualspeed_flags.sh

OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain-dualspeed}" \
TRAIN_ENTRY=dualspeed_patch/train_mem.py \
bash scripts/v1_5/pretrain.sh \
    "${DUALSPEED_FLAGS[@]}" \
    "$@"
