# MMBench-CN (Chinese dev): as MMBench, with the Chinese answer instruction (sourced by scripts/lib/run_eval.sh).
MMB_NAME="MMBench-CN"
MMB_SUBDIR="mmbench_cn"
MMB_SPLIT="mmbench_dev_cn_20231003"
MMB_LANG="cn"
source scripts/lib/eval/mmbench.sh
