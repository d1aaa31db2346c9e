#!/bin/bash
# The tiny-world quickstart for Hugging Face's own Llava (LlavaForConditionalGeneration), on this machine (CPU,
# 2 processes, DeepSpeed): build the tiny world -> stage-1 DualSpeed pretraining with the LLaVA scripts (as
# quickstart.sh) -> the tiny HF Llava built from that projector -> LoRA SFT with DualSpeed through
# scripts/hf/finetune_lora_dualspeed.py (HF chat template, DualSpeedTrainer) -> evaluation in full and fast mode.
# Results: $RUN (default checkpoints/tiny-hf): pretrain/, hf-llava/, hf-lora/, eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tiny_env.sh train
source scripts/lib/dualspeed_flags.sh

WORLD="${WORLD:-playground/tiny}"
RUN="${RUN:-checkpoints/tiny-hf}"
NUM_GPUS="${NUM_GPUS:-2}"
rm -rf "$RUN"  # a fresh run each time (the training scripts resume from checkpoints left in an output dir)
python -m playground.build_tiny_world --out "$WORLD"

# Stage 1, exactly as quickstart.sh (LLaVA's scripts): writes mm_projector.bin and mode_isolator.bin.
export MODEL="$WORLD/models/tiny-llama" VISION_TOWER="$WORLD/models/tiny-clip" IMAGE_FOLDER="$WORLD/images"
export NUM_GPUS BF16=False TF32=False GRADIENT_CHECKPOINTING=False NUM_WORKERS=0 REPORT_TO=none
DATA_PATH="$WORLD/pretrain.json" OUTPUT_DIR="$RUN/pretrain" GLOBAL_BATCH=32 PER_DEVICE_BATCH=16 \
    bash scripts/v1_5/pretrain_dualspeed.sh --logging_steps 50 --num_train_epochs 3 --learning_rate 2e-3

# The tiny LLaMA + CLIP as a Hugging Face Llava (+ processor with the tiny world's chat template), stage-1 projector.
python -m playground.world_hf --out "$RUN/hf-llava" --projector "$RUN/pretrain/mm_projector.bin"

# Stage 2 through the HF example script, quickstart.sh's stage-2 recipe: 2 epochs of sft.json, LoRA r16/alpha32 on
# the LLM's linear layers + the projector, lr 2e-3, global batch 16 (8 per process), ZeRO-2, DualSpeed's flags.
export DS_ACCELERATOR=cpu
torchrun --nproc_per_node "$NUM_GPUS" --master_port "${MASTER_PORT:-29513}" scripts/hf/finetune_lora_dualspeed.py \
    --model_name_or_path "$RUN/hf-llava" --data_path "$WORLD/sft.json" --image_folder "$IMAGE_FOLDER" \
    --output_dir "$RUN/hf-lora" --deepspeed scripts/zero2.json --bf16 False --tf32 False \
    --num_train_epochs 2 --per_device_train_batch_size $((16 / NUM_GPUS)) --gradient_accumulation_steps 1 \
    --learning_rate 2e-3 --weight_decay 0. --warmup_steps 0.03 --lr_scheduler_type cosine \
    --lora_r 16 --lora_alpha 32 --save_strategy no --logging_steps 50 --report_to none --seed 42 \
    --dataloader_num_workers 0 "${DUALSPEED_SFT_FLAGS[@]}" --mode_isolator_path "$RUN/pretrain/mode_isolator.bin"

# Evaluation: greedy short answers to the 1,500 held-out questions, plain Hugging Face inference (full) and
# DualSpeed's fast mode (pruned visual tokens behind the trained isolator).
mkdir -p "$RUN/eval"
for mode in full fast; do
    python scripts/hf/eval_tiny_world.py --model "$RUN/hf-llava" --adapter "$RUN/hf-lora" --world "$WORLD" \
        --mode "$mode" --answers-file "$RUN/eval/answers_$mode.jsonl" | tee "$RUN/eval/table_$mode.txt"
done
for mode in full fast; do
    echo "accuracy ($mode): $(grep '^overall' "$RUN/eval/table_$mode.txt" | awk '{print $2}')"
done
echo "quickstart_hf: done in $((SECONDS / 60)) min $((SECONDS % 60)) s (install, build, pretraining, SFT, evaluation)"
