#!/bin/bash
# DualSpeed stage 1 on LLaVA-NeXT: scripts/next/pretrain.sh in fast mode on every step. Each image's packed NeXT
# sequence (base view + unpadded tiles + row newlines) is pruned to 10% of its own length by DivPrune, and the mode
# isolator is prefixed once per image; the isolator is saved as mode_isolator.bin beside mm_projector.bin.
#
# Per-GPU batch 32 (accumulation 1, global 256) as in LLaVA-1.5: pruned sequences (<= 293 visual tokens + 4) are
# shorter than LLaVA-1.5's, and the frozen vision tower runs without gradient. Lower PER_DEVICE_BATCH if memory is
# short. Variables of scripts/next/pretrain.sh apply, plus PRUNING_RATIO VTP_METHOD ISOLATOR_LEN.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/dualspeed_flags.sh

OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-next-7b-pretrain-dualspeed}" \
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-32}" \
TRAIN_ENTRY=dualspeed_patch/train_mem.py \
bash scripts/next/pretrain.sh \
    "${DUALSPEED_FLAGS[@]}" \
    "$@"
