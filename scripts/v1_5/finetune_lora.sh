#!/bin/bash
# LLaVA-1.5 stage 2: LoRA instruction tuning on llava_v1_5_mix665k (LoRA r128/alpha256 + projector). ZeRO-3.
# Extra arguments are appended to the training command (later flags win).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/launch.sh

MODEL="${MODEL:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
DATA_PATH="${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"
PRETRAIN_DIR="${PRETRAIN_DIR:-./checkpoints/llava-v1.5-7b-pretrain}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-lora}"
GLOBAL_BATCH="${GLOBAL_BATCH:-128}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-16}"
GRAD_ACCUM="$(grad_accum_for "$GLOBAL_BATCH" "$PER_DEVICE_BATCH")"
TRAIN_ENTRY="${TRAIN_ENTRY:-llava/train/train_mem.py}"
preflight --pretrain-dir "$PRETRAIN_DIR"

$LAUNCHER ${TRAIN_ENTRY} \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --deepspeed "${ZERO_CONFIG:-./scripts/zero3.json}" \
    --model_name_or_path "$MODEL" \
    --version v1 \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --pretrain_mm_mlp_adapter "$PRETRAIN_DIR/mm_projector.bin" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 "$BF16" \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --eval_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
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
