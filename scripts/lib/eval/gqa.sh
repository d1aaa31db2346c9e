# GQA test-dev balanced: accuracy by llava.eval.eval_gqa (sourced by scripts/lib/run_eval.sh).
D="$EVAL_DIR/gqa"
SPLIT="${SPLIT:-llava_gqa_testdev_balanced}"
need "$D/$SPLIT.jsonl" "$EVAL_ZIP_HINT"
need "$D/data/testdev_balanced_questions.json" "download GQA's questions (https://cs.stanford.edu/people/dorarad/gqa/download.html, questions1.2.zip) and put testdev_balanced_questions.json in $D/data"
need "$D/data/images" "download GQA's images (images.zip, same page) and extract them to $D/data/images"
check_data GQA
ANSWERS="$D/answers/$SPLIT/$EXPERIMENT"
run_chunked "$D/$SPLIT.jsonl" "$D/data/images" "$ANSWERS"
"$PYTHON" -m llava.eval.convert_gqa_for_eval --src "$ANSWERS/merge.jsonl" --dst "$ANSWERS/testdev_balanced_predictions.json"
"$PYTHON" -m llava.eval.eval_gqa --questions "$D/data/testdev_balanced_questions.json" \
    --predictions "$ANSWERS/testdev_balanced_predictions.json"
