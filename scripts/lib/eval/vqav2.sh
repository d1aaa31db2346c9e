# VQAv2 test-dev: answers for the EvalAI server (sourced by scripts/lib/run_eval.sh).
D="$EVAL_DIR/vqav2"
SPLIT="${SPLIT:-llava_vqav2_mscoco_test-dev2015}"
need "$D/$SPLIT.jsonl" "$EVAL_ZIP_HINT"
need "$D/llava_vqav2_mscoco_test2015.jsonl" "$EVAL_ZIP_HINT"
need "$D/test2015" "download COCO test2015 images (http://images.cocodataset.org/zips/test2015.zip) and extract them to $D/test2015"
check_data VQAv2
run_chunked "$D/$SPLIT.jsonl" "$D/test2015" "$D/answers/$SPLIT/$EXPERIMENT"
"$PYTHON" -m llava.eval.convert_vqav2_for_submission --dir "$D" --split "$SPLIT" --ckpt "$EXPERIMENT"
echo "Submit $D/answers_upload/$SPLIT/$EXPERIMENT.json to the VQAv2 challenge on EvalAI (test-dev phase)."
