#!/bin/bash
# LLaVA-NeXT stage 1: the LLaVA-1.5 pretraining recipe and data (scripts/v1_5/pretrain.sh: LLaVA-Pretrain-558K,
# lr 1e-3, global batch 256, projector only, ZeRO-2) with NeXT's vision settings: anyres tiling, spatial_unpad merge
# and the 5 grid pinpoints of LLaVA-NeXT (up to 576 + 48 x 49 = 2928 visual tokens per image).
#
# Sequences are ~4.5x longer than LLaVA-1.5's (576 visual tokens), so the per-GPU batch drops from 32 to 8 and
# gradient accumulation makes up the global batch (8 x 8 GPUs x 4 = 256): about the same tokens per GPU step.
# model_max_length is 4096 (vicuna-7b-v1.5's context): 2048 would cut a 2x2-grid image's visual tokens.
# The projector is the only trained part, as upstream (image_newline stays at its initial value here and is
# trained in stage 2). Variables of scripts/v1_5/pretrain.sh apply, plus GRID_PINPOINTS MERGE_TYPE MODEL_MAX_LENGTH.
# Extra arguments are appended to the training command (later flags win).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-next-7b-pretrain}" \
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-8}" \
bash scripts/v1_5/pretrain.sh \
    --image_aspect_ratio anyres \
    --mm_patch_merge_type "${MERGE_TYPE:-spatial_unpad}" \
    --image_grid_pinpoints "${GRID_PINPOINTS:-[(336,672),(672,336),(672,672),(1008,336),(336,1008)]}" \
    --model_max_length "${MODEL_MAX_LENGTH:-4096}" \
    "$@"
