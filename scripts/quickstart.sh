#!/bin/bash
# The whole pipeline on the embedded tiny world, on this machine (CPU, 2 processes, DeepSpeed):
# install -> build the tiny world -> stage-1 pretraining -> stage-2 LoRA SFT -> evaluation (accuracy printed).
# Uses the same scripts as a real run; paths, batch sizes, precision, the conversation template and the tiny-run
# schedule below are overridden. Results: $RUN (default checkpoints/tiny): pretrain/, llava-lora/, eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tiny_env.sh train

WORLD="${WORLD:-playground/tiny}"
RUN="${RUN:-checkpoints/tiny}"
rm -rf "$RUN"  # a fresh run each time (the training scripts resume from checkpoints left in an output dir)
python -m playground.build_tiny_world --out "$WORLD"

export MODEL="$WORLD/models/tiny-llama" VISION_TOWER="$WORLD/models/tiny-clip" IMAGE_FOLDER="$WORLD/images"
export NUM_GPUS="${NUM_GPUS:-2}" BF16=False TF32=False GRADIENT_CHECKPOINTING=False NUM_WORKERS=0 REPORT_TO=none

# Stage 1 (DualSpeed: fast mode only, 6 of 64 visual tokens + 4 isolator vectors): 2,000 captions seen 3 times.
DATA_PATH="$WORLD/pretrain.json" OUTPUT_DIR="$RUN/pretrain" GLOBAL_BATCH=32 PER_DEVICE_BATCH=16 \
    bash scripts/v1_5/pretrain_dualspeed.sh --logging_steps 50 --num_train_epochs 3 --learning_rate 2e-3

# Stage 2: LoRA rank scaled to the 128-wide LLM, ZeRO-2 (on two gloo processes ZeRO-3's gathers cost more than the
# tiny model's compute), the tiny world's chat template (short system prompt, image first).
ZERO_CONFIG=./scripts/zero2.json \
DATA_PATH="$WORLD/sft.json" PRETRAIN_DIR="$RUN/pretrain" OUTPUT_DIR="$RUN/llava-lora" GLOBAL_BATCH=16 PER_DEVICE_BATCH=8 \
    bash scripts/v1_5/finetune_lora_dualspeed.sh --logging_steps 50 --num_train_epochs 2 --version tiny_world \
    --lora_r 16 --lora_alpha 32 --learning_rate 2e-3 --mm_projector_lr 2e-3

# Evaluation, plain LLaVA inference: generated short answers, then each choice's likelihood with the true and with
# shuffled images (the control: near chance when the answers come from the image).
python -m llava.eval.model_vqa_loader --model-path "$RUN/llava-lora" --model-base "$MODEL" \
    --image-folder "$WORLD/images" --question-file "$WORLD/eval/questions.jsonl" --batch-size 32 \
    --answers-file "$RUN/eval/answers.jsonl" --conv-mode tiny_world --temperature 0 --max_new_tokens 8 --device cpu
python -m llava.eval.eval_tiny_world --answers-file "$RUN/eval/answers.jsonl" --key-file "$WORLD/eval/answers_key.jsonl"
python -m llava.eval.model_vqa_choices --model-path "$RUN/llava-lora" --model-base "$MODEL" \
    --image-folder "$WORLD/images" --question-file "$WORLD/eval/questions.jsonl" \
    --key-file "$WORLD/eval/answers_key.jsonl" --conv-mode tiny_world --shuffled-images \
    --out-dir "$RUN/eval/choices" --device cpu
echo "quickstart: done in $((SECONDS / 60)) min $((SECONDS % 60)) s (install, build, pretraining, SFT, evaluation)"
