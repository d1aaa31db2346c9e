# MMBench (English dev): upload file for the server, plus a local circular-evaluation score when the split has
# answers. mmbench_cn.sh sets MMB_* and sources this file (sourced by scripts/lib/run_eval.sh).
MMB_NAME="${MMB_NAME:-MMBench}"
D="$EVAL_DIR/${MMB_SUBDIR:-mmbench}"
SPLIT="${SPLIT:-${MMB_SPLIT:-mmbench_dev_20230712}}"
need "$D/$SPLIT.tsv" "download https://download.openmmlab.com/mmclassification/datasets/mmbench/$SPLIT.tsv into $D"
check_data "$MMB_NAME"
run_model llava.eval.model_vqa_mmbench --question-file "$D/$SPLIT.tsv" \
    --answers-file "$D/answers/$SPLIT/$EXPERIMENT.jsonl" --single-pred-prompt --lang "${MMB_LANG:-en}"
"$PYTHON" -m llava.eval.convert_mmbench_for_submission --annotation-file "$D/$SPLIT.tsv" \
    --result-dir "$D/answers/$SPLIT" --upload-dir "$D/answers_upload/$SPLIT" --experiment "$EXPERIMENT"
if head -n 1 "$D/$SPLIT.tsv" | tr '\t' '\n' | grep -qx answer; then
    "$PYTHON" -m llava.eval.eval_mmbench --annotation-file "$D/$SPLIT.tsv" \
        --result-file "$D/answers/$SPLIT/$EXPERIMENT.jsonl"
fi
echo "Submit $D/answers_upload/$SPLIT/$EXPERIMENT.xlsx to the MMBench evaluation server."
