# ScienceQA test split; the paper's number is IMG-Accuracy (sourced by scripts/lib/run_eval.sh).
D="$EVAL_DIR/scienceqa"
need "$D/llava_test_CQM-A.json" "$EVAL_ZIP_HINT"
for f in problems.json pid_splits.json; do
    need "$D/$f" "download $f from the data/scienceqa folder of https://github.com/lupantech/ScienceQA into $D"
done
need "$D/images/test" "download ScienceQA's images (test split, see https://github.com/lupantech/ScienceQA) and put them in $D/images/test"
check_data ScienceQA
run_model llava.eval.model_vqa_science --question-file "$D/llava_test_CQM-A.json" --image-folder "$D/images/test" \
    --answers-file "$D/answers/$EXPERIMENT.jsonl" --single-pred-prompt
"$PYTHON" -m llava.eval.eval_science_qa --base-dir "$D" --result-file "$D/answers/$EXPERIMENT.jsonl" \
    --output-file "$D/answers/${EXPERIMENT}_output.jsonl" --output-result "$D/answers/${EXPERIMENT}_result.json"
