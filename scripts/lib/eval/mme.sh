# MME: perception and cognition scores (sourced by scripts/lib/run_eval.sh).
D="$EVAL_DIR/MME"
need "$D/llava_mme.jsonl" "$EVAL_ZIP_HINT"
need "$D/MME_Benchmark_release_version" "download MME from its authors (https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation) and put MME_Benchmark_release_version in $D"
check_data MME
run_model llava.eval.model_vqa_loader --question-file "$D/llava_mme.jsonl" \
    --image-folder "$D/MME_Benchmark_release_version" --answers-file "$D/answers/$EXPERIMENT.jsonl"
"$PYTHON" -m llava.eval.convert_answer_to_mme --experiment "$EXPERIMENT" --mme-dir "$D"
"$PYTHON" -m llava.eval.eval_mme --results-dir "$D/eval_tool/answers/$EXPERIMENT"
