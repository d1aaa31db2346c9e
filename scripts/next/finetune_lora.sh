#!/bin/bash
# LLaVA-NeXT stage 2: the LLaVA-1.5 LoRA instruction-tuning recipe and data (scripts/v1_5/finetune_lora.sh:
# llava_v1_5_mix665k, LoRA r128/alpha256, lr 2e-4, projector lr 2e-5, global batch 128, ZeRO-3) with NeXT's
# vision settings (anyres, spatial_unpad, LLaVA-NeXT's 5 grid pinpoints). The learned image_newline is trained
# with the projector and saved in non_lora_trainables.bin (key model.image_newline).
#
# Per-GPU batch 4 instead of 16, gradient accumulation 4 (4 x 8 GPUs x 4 = 128): NeXT samples are ~4x longer.
# model_max_length 4096 (2048 would cut the visual tokens of 2x2-grid images). ZeRO-3 keeps image_newline whole
# because scripts/zero3.json leaves stage3_param_persistence_threshold at "auto" (10 x hidden_size elements).
# Variables of scripts/v1_5/finetune_lora.sh apply, plus GRID_PINPOINTS MERGE_TYPE MODEL_MAX_LENGTH.
set -euo pipefail
cd "$(dirname "$0")/../.."

PRETRAIN_DIR="${PRETRAIN_DIR:-./checkpoints/llava-next-7b-pretrain}" \
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-next-7b-lora}" \
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-4}" \
bash scripts/v1_5/finetune_lora.sh \
    --image_aspect_ratio anyres \
    --mm_patch_merge_type "${MERGE_TYPE:-spatial_unpad}" \
    --image_grid_pinpoints "${GRID_PINPOINTS:-[(336,672),(672,336),(672,672),(1008,336),(336,1008)]}" \
    --model_max_length "${MODEL_MAX_LENGTH:-4096}" \
    "$@"
