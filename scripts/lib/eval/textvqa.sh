# TextVQA val (with OCR tokens in the prompt): soft accuracy (sourced by scripts/lib/run_eval.sh).
D="$EVAL_DIR/textvqa"
need "$D/llava_textvqa_val_v051_ocr.jsonl" "$EVAL_ZIP_HINT"
need "$D/TextVQA_0.5.1_val.json" "download https://dl.fbaipublicfiles.com/textvqa/data/TextVQA_0.5.1_val.json into $D"
need "$D/train_images" "download https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip and extract it in $D (gives $D/train_images)"
check_data TextVQA
run_model llava.eval.model_vqa_loader --question-file "$D/llava_textvqa_val_v051_ocr.jsonl" \
    --image-folder "$D/train_images" --answers-file "$D/answers/$EXPERIMENT.jsonl"
"$PYTHON" -m llava.eval.eval_textvqa --annotation-file "$D/TextVQA_0.5.1_val.json" \
    --result-file "$D/answers/$EXPERIMENT.jsonl"
