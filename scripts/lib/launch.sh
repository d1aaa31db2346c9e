# Shared by the training scripts: picks the launcher and keeps the recipe's global batch constant.
# Every variable below can be overridden from the environment.

NUM_GPUS="${NUM_GPUS:-8}"

# deepspeed launcher on GPU machines (as upstream LLaVA); torchrun with gloo on machines without a GPU.
HAS_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAS_GPU=1; fi
if [ -z "${LAUNCHER:-}" ]; then
    if [ "$HAS_GPU" = 1 ]; then
        LAUNCHER="deepspeed --num_gpus ${NUM_GPUS}"
    else
        export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
        LAUNCHER="torchrun --nproc_per_node ${NUM_GPUS} --master_port ${MASTER_PORT:-29512}"
    fi
fi

# grad_accum = global_batch / (per_device_batch * num_gpus), which must divide exactly.
grad_accum_for() {  # usage: grad_accum_for GLOBAL_BATCH PER_DEVICE_BATCH
    local global="$1" per_device="$2"
    local denom=$(( per_device * NUM_GPUS ))
    if [ $(( global % denom )) -ne 0 ]; then
        echo "error: global batch ${global} is not divisible by per-device batch ${per_device} x ${NUM_GPUS} GPUs" >&2
        exit 2
    fi
    echo $(( global / denom ))
}

# The recipe's bf16 + tf32 on GPU machines; fp32 (what a CPU can run) without a GPU, said once.
if [ "$HAS_GPU" = 0 ] && { [ -z "${BF16:-}" ] || [ -z "${TF32:-}" ]; }; then
    echo "note: no GPU found: training in fp32 (BF16=${BF16:-False} TF32=${TF32:-False})" >&2
fi
BF16="${BF16:-$([ "$HAS_GPU" = 1 ] && echo True || echo False)}"
TF32="${TF32:-$([ "$HAS_GPU" = 1 ] && echo True || echo False)}"
GRADIENT_CHECKPOINTING="${GRADIENT_CHECKPOINTING:-True}"
REPORT_TO="${REPORT_TO:-none}"
NUM_WORKERS="${NUM_WORKERS:-4}"

preflight() {  # usage: preflight [--pretrain-dir DIR]; paths and hardware checked once, one line per problem
    if [ -n "${SKIP_PREFLIGHT:-}" ]; then return 0; fi  # e.g. LAUNCHER=echo to print the command only
    "${PYTHON:-python}" -m llava.train.preflight --model "$MODEL" --vision-tower "$VISION_TOWER" \
        --data-path "$DATA_PATH" --image-folder "$IMAGE_FOLDER" --bf16 "$BF16" --tf32 "$TF32" "$@" || exit 2
}
