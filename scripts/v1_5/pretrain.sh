#!/bin/bash
# LLaVA-1.5 stage 1: train the projector on LLaVA-Pretrain-558K (LLM and vision tower frozen). ZeRO-2.
# Extra arguments are appended to the training command (later flags win).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/launch.sh

MODEL="${MODEL:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
DATA_PATH="${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain}"
GLOBAL_BATCH="${GLOBAL_BATCH:-256}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-32}"
GRAD_ACCUM="$(grad_accum_for "$GLOBAL_BATCH" "$PER_DEVICE_BATCH")"
TRAIN_ENTRY="${TRAIN_ENTRY:-llava/train/train_mem.py}"
preflight

$LAUNCHER ${TRAIN_ENTRY} \
    --deepspeed "${ZERO_CONFIG:-./scripts/zero2.json}" \
    --model_name_or_path "$MODEL" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 "$BF16" \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --eval_strategy "no" \
    --save_strategy "steps" \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 "$TF32" \
    --model_max_length 2048 \
    --gradient_checkpointing "$GRADIENT_CHECKPOINTING" \
    --dataloader_num_workers "$NUM_WORKERS" \
    --lazy_preprocess True \
    --report_to "$REPORT_TO" \
    "$@"
