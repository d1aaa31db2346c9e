#!/bin/bash
# DualSpeed stage 2 on LLaVA-NeXT: scripts/next/finetune_lora.sh alternating fast mode (each image's packed NeXT
# sequence pruned to 10% of its own length + isolator, probability 1 - r) and slow mode (the full packed sequence +
# self-distillation from the fast-mode input, probability r). The isolator is read from
# PRETRAIN_DIR/mode_isolator.bin when present (else a fresh one, with a warning).
#
# Per-GPU batch stays 4 (accumulation 4, global 128) like the baseline: slow steps run the full NeXT sequences
# (plus a teacher forward without gradient), so they set the memory peak. Variables of scripts/next/finetune_lora.sh
# apply, plus PRUNING_RATIO SLOW_MODE_RATIO VTP_METHOD ISOLATOR_LEN DISTILL_T DISTILL_ALPHA.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/dualspeed_flags.sh

PRETRAIN_DIR="${PRETRAIN_DIR:-./checkpoints/llava-next-7b-pretrain-dualspeed}" \
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-next-7b-lora-dualspeed}" \
TRAIN_ENTRY=dualspeed_patch/train_mem.py \
bash scripts/next/finetune_lora.sh \
    "${DUALSPEED_SFT_FLAGS[@]}" \
    "$@"
