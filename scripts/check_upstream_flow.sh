#!/bin/bash
# End-to-end check of the README's upstream recipe on upstream LLaVA's own train() (scripts/upstream_train.py),
# on upstream's stack: 2-process DeepSpeed ZeRO-2 pretraining, then 2-process ZeRO-3 LoRA fine-tuning that loads
# the isolator. Asserts mode_isolator.bin in output_dir and every checkpoint-*, loaded by the LoRA stage, trained,
# and the dualspeed/* metrics in the Trainer's log history. Not for CI (needs the venv of scripts/upstream_env.sh
# plus deepspeed and peft; about 2 minutes on 2 CPU cores).
#
# Usage: scripts/check_upstream_flow.sh [WORLD]   (WORLD: a tiny world built by this repo's environment,
#        default playground/tiny)
# Environment: VENV (default /tmp/venv437), LLAVA_TREE (default /tmp/upstream-llava), OUT (default a temp dir).
#
# Deviations from upstream's pins, all forced by torch 2.13 (the CPU wheel this machine has): deepspeed 0.19.8
# (0.12.6 fails to import: torch.distributed.elastic has no `log` any more), and therefore a ZeRO-3 config with an
# integer stage3_prefetch_bucket_size (transformers 4.37.2 fills "auto" with a float, which deepspeed >= 0.15
# rejects) and no --mm_projector_lr (ZeRO-3 drops upstream's empty 4th parameter group, and torch 2.13's LR
# scheduler then fails on the group count; the same without DualSpeed). accelerate 0.21 runs DeepSpeed on CUDA
# only: scripts/upstream_train.py shims it on GPU-less machines.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
WORLD=$(cd "${1:-$repo/playground/tiny}" && pwd)
VENV=${VENV:-/tmp/venv437}
LLAVA_TREE=${LLAVA_TREE:-/tmp/upstream-llava}
OUT=${OUT:-$(mktemp -d /tmp/upstream_flow.XXXXXX)}
mkdir -p "$OUT"
[ -f "$WORLD/models/tiny-llama/config.json" ] || { echo "$WORLD: not a built tiny world" >&2; exit 2; }
"$VENV/bin/python" -c "import deepspeed, peft" 2>/dev/null || {
    echo "$VENV lacks deepspeed/peft: DS_BUILD_OPS=0 $VENV/bin/pip install deepspeed==0.19.8 peft==0.10.0" >&2; exit 2; }
export PYTHONPATH=$LLAVA_TREE HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu
common=(--model_name_or_path "$WORLD/models/tiny-llama" --vision_tower "$WORLD/models/tiny-clip"
    --image_folder "$WORLD/images" --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2
    --mm_use_im_start_end False --mm_use_im_patch_token False --save_strategy steps --save_steps 2
    --per_device_train_batch_size 4 --learning_rate 1e-3 --lazy_preprocess True --report_to none --logging_steps 1
    --dataloader_num_workers 0 --model_max_length 512 --seed 0
    --dualspeed True --pruning_ratio 0.9 --mode_isolator_len 4)
run() {  # name, flags...
    local name=$1; shift
    echo "== $name -> $OUT/$name (log $OUT/$name.log)"
    "$VENV/bin/python" -m torch.distributed.run --nproc_per_node 2 --master_port $((20000 + RANDOM % 20000)) \
        "$repo/scripts/upstream_train.py" "${common[@]}" --output_dir "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1 \
        || { tail -40 "$OUT/$name.log"; echo "FAIL: $name exited non-zero" >&2; exit 1; }
}
run pretrain --data_path "$WORLD/pretrain.json" --version plain --tune_mm_mlp_adapter True --max_steps 3 \
    --deepspeed "$repo/scripts/zero2.json"
run lora --data_path "$WORLD/sft.json" --version v1 --lora_enable True --lora_r 8 --lora_alpha 16 \
    --lora_dropout 0.0 --pretrain_mm_mlp_adapter "$OUT/pretrain/mm_projector.bin" --image_aspect_ratio pad \
    --group_by_modality_length True --slow_mode_ratio 0.5 --max_steps 4 \
    --deepspeed "$repo/scripts/upstream_compat/zero3_int_prefetch.json"
"$VENV/bin/python" "$repo/scripts/upstream_compat/verify_flow.py" "$OUT"
