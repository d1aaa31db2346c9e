# POPE (adversarial / popular / random on COCO val2014): F1 and friends (sourced by scripts/lib/run_eval.sh).
D="$EVAL_DIR/pope"
need "$D/llava_pope_test.jsonl" "$EVAL_ZIP_HINT"
need "$D/coco" "download coco_pope_adversarial.json, coco_pope_popular.json and coco_pope_random.json from output/coco of https://github.com/AoiDragon/POPE into $D/coco"
need "$D/val2014" "download COCO val2014 images (http://images.cocodataset.org/zips/val2014.zip) and extract them to $D/val2014"
check_data POPE
run_model llava.eval.model_vqa_loader --question-file "$D/llava_pope_test.jsonl" --image-folder "$D/val2014" \
    --answers-file "$D/answers/$EXPERIMENT.jsonl"
"$PYTHON" -m llava.eval.eval_pope --annotation-dir "$D/coco" --question-file "$D/llava_pope_test.jsonl" \
    --result-file "$D/answers/$EXPERIMENT.jsonl"
