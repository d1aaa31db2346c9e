#!/bin/bash
# DualSpeed stage 2: LoRA instruction tuning alternating fast mode (pruned + isolator, probability 1 - r) and
# slow mode (full tokens + self-distillation from the fast-mode input, probability r). The isolator is read
# from PRETRAIN_DIR/mode_isolator.bin when present (else a fresh one, with a warning). Same recipe and variables
# as finetune_lora.sh, plus PRUNING_RATIO SLOW_MODE_RATIO VTP_METHOD ISOLATOR_LEN DISTILL_T DISTILL_ALPHA.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/dualspeed_flags.sh

PRETRAIN_DIR="${PRETRAIN_DIR:-./checkpoints/llava-v1.5-7b-pretrain-dualspeed}" \
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-lora-dualspeed}" \
TRAIN_ENTRY=dualspeed_patch/train_mem.py \
bash scripts/v1_5/finetune_lora.sh \
    "${DUALSPEED_SFT_FLAGS[@]}" \
    "$@"
