#!/bin/bash
# LLaVA-NeXT DualSpeed on the tiny world (CPU, 2 processes, DeepSpeed): the scripts/next/*_dualspeed.sh scripts
# on non-square images (two scenes side by side or stacked), so anyres tiling, unpadding, image_newline and several
# pinpoints are exercised end to end. Same overrides as quickstart.sh; prints the training logs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tiny_env.sh train

WORLD="${WORLD:-playground/tiny}"
RUN="${RUN:-checkpoints/tiny-next}"
rm -rf "$RUN"
python -m playground.build_tiny_world --out "$WORLD"
python -m playground.tiny_next --world "$WORLD" --n "${N_NEXT:-400}"

export MODEL="$WORLD/models/tiny-llama" VISION_TOWER="$WORLD/models/tiny-clip" IMAGE_FOLDER="$WORLD/next"
export NUM_GPUS="${NUM_GPUS:-2}" BF16=False TF32=False GRADIENT_CHECKPOINTING=False NUM_WORKERS=0 REPORT_TO=none
export GRID_PINPOINTS="[(64,128),(128,64),(128,128),(192,64),(64,192)]" MODEL_MAX_LENGTH=1024

DATA_PATH="$WORLD/next/pretrain.json" OUTPUT_DIR="$RUN/pretrain" GLOBAL_BATCH=16 PER_DEVICE_BATCH=8 \
    bash scripts/next/pretrain_dualspeed.sh --logging_steps 5

SFT_STEPS_NOTE="${SFT_STEPS:-20} SFT steps on 400 captions teach no skill: accuracy is quickstart.sh's job"
DATA_PATH="$WORLD/next/sft.json" PRETRAIN_DIR="$RUN/pretrain" OUTPUT_DIR="$RUN/llava-lora" GLOBAL_BATCH=8 PER_DEVICE_BATCH=4 \
    bash scripts/next/finetune_lora_dualspeed.sh --logging_steps 5 --max_steps "${SFT_STEPS:-20}"
echo "NeXT DualSpeed run finished in $((SECONDS / 60)) min $((SECONDS % 60)) s: $RUN/llava-lora (a check that anyres" \
    "tiling, unpadding, image_newline and pruning after packing train end to end; $SFT_STEPS_NOTE)"
