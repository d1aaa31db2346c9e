# SEED-Bench: accuracy per question type, image / video / total, and the leaderboard file (sourced by
# scripts/lib/run_eval.sh).
D="$EVAL_DIR/seed_bench"
Q="$D/llava-seed-bench.jsonl"
need "$Q" "$EVAL_ZIP_HINT"
need "$D/SEED-Bench.json" "download SEED-Bench.json from https://huggingface.co/datasets/AILab-CVC/SEED-Bench into $D"
need "$D/SEED-Bench-image" "download SEED-Bench-image (https://github.com/AILab-CVC/SEED-Bench/blob/main/DATASET.md) and extract it to $D/SEED-Bench-image"
if [ -f "$Q" ] && grep -q "SEED-Bench-video-image" "$Q"; then
    need "$D/SEED-Bench-video-image" "download SEED-Bench's videos (same page) and extract each one's middle frame into $D/SEED-Bench-video-image (upstream LLaVA's extract_video_frames.py), or drop the video questions from $Q"
fi
check_data SEED-Bench
run_chunked "$Q" "$D" "$D/answers/$EXPERIMENT"
"$PYTHON" -m llava.eval.convert_seed_for_submission --annotation-file "$D/SEED-Bench.json" \
    --result-file "$D/answers/$EXPERIMENT/merge.jsonl" --result-upload-file "$D/answers_upload/$EXPERIMENT.jsonl"
