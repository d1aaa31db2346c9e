#!/bin/bash
# The whole pipeline on the embedded tiny world, on this machine (CPU, 2 processes, DeepSpeed):
# install -> build the tiny world -> stage-1 pretraining -> stage-2 LoRA SFT -> evaluation (accuracy printed).
# Uses the same scripts as a real run; only paths, batch sizes and precision are overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tiny_env.sh train

WORLD="${WORLD:-playground/tiny}"
RUN="${RUN:-checkpoints/tiny}"
rm -rf "$RUN"  # a fresh run each time (the training scripts resume from checkpoints left in an output dir)
python -m playground.build_tiny_world --out "$WORLD"

export MODEL="$WORLD/models/tiny-llama" VISION_TOWER="$WORLD/models/tiny-clip" IMAGE_FOLDER="$WORLD/images"
export NUM_GPUS="${NUM_GPUS:-2}" BF16=False TF32=False GRADIENT_CHECKPOINTING=False NUM_WORKERS=0 REPORT_TO=none

DATA_PATH="$WORLD/pretrain.json" OUTPUT_DIR="$RUN/pretrain" GLOBAL_BATCH=32 PER_DEVICE_BATCH=16 \
    bash scripts/v1_5/pretrain_dualspeed.sh --logging_steps 10

DATA_PATH="$WORLD/sft.json" PRETRAIN_DIR="$RUN/pretrain" OUTPUT_DIR="$RUN/llava-lora" GLOBAL_BATCH=16 PER_DEVICE_BATCH=8 \
    bash scripts/v1_5/finetune_lora_dualspeed.sh --logging_steps 10 --learning_rate 1e-3 --mm_projector_lr 1e-3

python -m llava.eval.model_vqa_loader --model-path "$RUN/llava-lora" --model-base "$MODEL" \
    --image-folder "$WORLD/images" --question-file "$WORLD/eval/questions.jsonl" \
    --answers-file "$RUN/eval/answers.jsonl" --conv-mode vicuna_v1 --temperature 0 --max_new_tokens 16 --device cpu
python -m llava.eval.eval_tiny_world --answers-file "$RUN/eval/answers.jsonl" --key-file "$WORLD/eval/answers_key.jsonl"
