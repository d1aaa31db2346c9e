# Shared by the benchmark scripts scripts/{v1_5,next}/eval/*.sh (sourced by scripts/lib/run_eval.sh, which sets
# VARIANT). Every setting can be overridden from the environment:
#   CKPT        checkpoint name under ./checkpoints (default: the variant's DualSpeed LoRA run)
#   MODEL_PATH  checkpoint to evaluate (default ./checkpoints/$CKPT)
#   MODEL_BASE  base LLM of a LoRA checkpoint (default lmsys/vicuna-7b-v1.5; set it empty for a merged model)
#   CONV_MODE   conversation template (default vicuna_v1)
#   EXPERIMENT  name of the answer / result files (default $CKPT; give pruned runs their own name)
#   EVAL_DIR    benchmark data root (default ./playground/data/eval, upstream LLaVA's layout)
#   PYTHON      interpreter (default python)
#   CUDA_VISIBLE_DEVICES  VQAv2, GQA and SEED-Bench run one chunk per listed GPU, in parallel

case "${VARIANT:-}" in
    v1_5) DEFAULT_CKPT="llava-v1.5-7b-lora-dualspeed" ;;
    next) DEFAULT_CKPT="llava-next-7b-lora-dualspeed" ;;
    *) echo "error: VARIANT must be v1_5 or next, got '${VARIANT:-}'" >&2; exit 2 ;;
esac
CKPT="${CKPT:-$DEFAULT_CKPT}"
MODEL_PATH="${MODEL_PATH:-./checkpoints/$CKPT}"
MODEL_BASE="${MODEL_BASE-lmsys/vicuna-7b-v1.5}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
EXPERIMENT="${EXPERIMENT:-$CKPT}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
PYTHON="${PYTHON:-python}"
EVAL_ZIP_HINT="download LLaVA's eval.zip (linked from upstream LLaVA's docs/Evaluation.md) and extract it to $EVAL_DIR"

MODEL_ARGS=(--model-path "$MODEL_PATH" --temperature 0 --conv-mode "$CONV_MODE")
if [ -n "$MODEL_BASE" ]; then MODEL_ARGS+=(--model-base "$MODEL_BASE"); fi

MISSING_DATA=()
need() {  # usage: need PATH "what to download and where to put it"; recorded, reported by check_data
    if [ ! -e "$1" ]; then MISSING_DATA+=("$1 missing: $2"); fi
}

check_data() {  # usage: check_data BENCHMARK; exits 1 listing every missing file before any model is loaded
    if [ "${#MISSING_DATA[@]}" -gt 0 ]; then
        echo "error: data for $1 is incomplete:" >&2
        printf '  %s\n' "${MISSING_DATA[@]}" >&2
        echo "See docs/evaluation.md ($1) for the layout under $EVAL_DIR." >&2
        exit 1
    fi
}

run_model() {  # usage: run_model MODULE ARGS...; the script's own arguments come last, so they win
    "$PYTHON" -m "$1" "${MODEL_ARGS[@]}" "${@:2}" "${EXTRA_ARGS[@]}"
}

run_chunked() {  # usage: run_chunked QUESTION_FILE IMAGE_FOLDER ANSWER_DIR; one model_vqa_loader per GPU, merged
    local questions="$1" images="$2" answers="$3" gpus pids=() idx failed=0
    IFS=',' read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-0}"
    local chunks="${#gpus[@]}"
    mkdir -p "$answers"
    for idx in $(seq 0 $((chunks - 1))); do
        CUDA_VISIBLE_DEVICES="${gpus[$idx]}" run_model llava.eval.model_vqa_loader \
            --question-file "$questions" --image-folder "$images" \
            --answers-file "$answers/${chunks}_${idx}.jsonl" --num-chunks "$chunks" --chunk-idx "$idx" &
        pids+=($!)
    done
    for idx in "${!pids[@]}"; do
        wait "${pids[$idx]}" || { echo "error: chunk $idx of $chunks failed" >&2; failed=1; }
    done
    [ "$failed" -eq 0 ] || exit 1
    : > "$answers/merge.jsonl"
    for idx in $(seq 0 $((chunks - 1))); do cat "$answers/${chunks}_${idx}.jsonl" >> "$answers/merge.jsonl"; done
}
