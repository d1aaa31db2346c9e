# Shared by the tiny-world entry scripts (quickstart, quickstart_next, reproduce_table2, sweep): install what they
# need unless SKIP_INSTALL is set (CPU torch first: a bare `torch` requirement pulls GBs of CUDA wheels), then the
# offline, one-thread environment the tiny world runs in. Usage: source scripts/lib/tiny_env.sh EXTRAS (e.g. train).
if [ -z "${SKIP_INSTALL:-}" ]; then
    python -m pip install --quiet torch==2.13.0
    python -m pip install --quiet -e ".[${1:-train}]"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
