#!/bin/bash
# Recreates the environment scripts/check_upstream_compat.py runs in: a venv with upstream LLaVA's pinned stack
# (CPU torch first, then transformers 4.37.2 & co.) and an exported upstream LLaVA tree. Idempotent: a venv that
# already imports the pinned versions and a tree already exported from the same commit are left as they are.
#
# Needs: the Python package index pip is configured with (PyPI or a local mirror) and the upstream LLaVA source,
# either a bare git repository of github.com/haotian-liu/LLaVA (e.g. what a `fetch` of it returns) or an
# existing work tree of it. Manual use only: CI must not call this (it needs both of those, and tests don't).
#
# Usage: scripts/upstream_env.sh SOURCE [WORLD]
#   SOURCE  bare git dir of upstream LLaVA (exported to $LLAVA_TREE) or an upstream tree (used in place)
#   WORLD   optional built tiny world; if given, the checker is run on it at the end
# Environment: VENV (default /tmp/venv437), LLAVA_TREE (default /tmp/upstream-llava),
#   PYTHON (default /root/.pyenv/versions/3.11.7/bin/python, else python3.11),
#   TORCH_SPEC (default the local CPU wheel in /opt/wheels if present, else torch==2.13.0).
set -euo pipefail

usage() { sed -n '/^# Usage/,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
SOURCE=$1
WORLD=${2:-}
VENV=${VENV:-/tmp/venv437}
LLAVA_TREE=${LLAVA_TREE:-/tmp/upstream-llava}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=/root/.pyenv/versions/3.11.7/bin/python
    [ -x "$PYTHON" ] || PYTHON=$(command -v python3.11) || { echo "no python3.11 found; set PYTHON" >&2; exit 1; }
fi
WHEEL=/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
if [ -z "${TORCH_SPEC:-}" ]; then
    if [ -f "$WHEEL" ]; then TORCH_SPEC=$WHEEL; else TORCH_SPEC=torch==2.13.0; fi
fi
PINNED=(transformers==4.37.2 tokenizers==0.15.1 accelerate==0.21.0 einops==0.6.1 "numpy<2" sentencepiece protobuf
        pillow safetensors)
ARCH_FILE=llava/model/llava_arch.py

# --- upstream tree --------------------------------------------------------------------------------------------
if [ -f "$SOURCE/$ARCH_FILE" ]; then
    LLAVA_TREE=$SOURCE
    echo "upstream tree: $LLAVA_TREE (used in place)"
elif git --git-dir="$SOURCE" rev-parse --verify -q HEAD^{commit} >/dev/null 2>&1; then
    commit=$(git --git-dir="$SOURCE" rev-parse HEAD)
    if [ -f "$LLAVA_TREE/$ARCH_FILE" ] && [ "$(cat "$LLAVA_TREE/.upstream-commit" 2>/dev/null)" = "$commit" ]; then
        echo "upstream tree: $LLAVA_TREE already exported from $commit"
    else
        # A fetched mirror may lack its largest blobs (demo images); leave those files out instead of failing.
        excludes=()
        while IFS=$'\t' read -r -d '' meta path; do
            read -r _ type blob <<<"$meta"
            if [ "$type" = blob ] && ! git --git-dir="$SOURCE" cat-file -e "$blob" 2>/dev/null; then
                excludes+=(":(exclude,literal)$path")
                echo "upstream tree: leaving out $path (blob absent from $SOURCE)"
            fi
        done < <(git --git-dir="$SOURCE" ls-tree -r -z HEAD)
        tmp=$(mktemp -d "${LLAVA_TREE%/}.tmp.XXXXXX")
        # git archive still prints "invalid object" for an excluded absent blob; its exit status is what counts.
        git --git-dir="$SOURCE" archive HEAD -- . "${excludes[@]}" 2> >(grep -v '^error: invalid object' >&2) \
            | tar -x -C "$tmp"
        [ -f "$tmp/$ARCH_FILE" ] || { echo "export of $SOURCE lacks $ARCH_FILE" >&2; rm -rf "$tmp"; exit 1; }
        echo "$commit" >"$tmp/.upstream-commit"
        if [ -e "$LLAVA_TREE" ] && [ ! -f "$LLAVA_TREE/$ARCH_FILE" ] && [ -n "$(ls -A "$LLAVA_TREE")" ]; then
            echo "$LLAVA_TREE exists and is not an upstream tree; not replacing it" >&2; rm -rf "$tmp"; exit 1
        fi
        rm -rf "$LLAVA_TREE"
        mv "$tmp" "$LLAVA_TREE"
        echo "upstream tree: exported $commit to $LLAVA_TREE"
    fi
else
    echo "$SOURCE: neither an upstream LLaVA tree (no $ARCH_FILE) nor a git repository" >&2
    exit 1
fi

# --- venv -----------------------------------------------------------------------------------------------------
pinned_ok() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import accelerate, einops, numpy, PIL, safetensors, sentencepiece, google.protobuf, tokenizers, torch, transformers
want = {transformers: "4.37.2", tokenizers: "0.15.1", accelerate: "0.21.0", einops: "0.6.1"}
assert all(module.__version__ == version for module, version in want.items())
assert int(numpy.__version__.split(".")[0]) < 2
EOF
}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if pinned_ok; then
    echo "venv: $VENV already has the pinned stack"
else
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install --quiet "${PINNED[@]}"
    pinned_ok || { echo "venv: $VENV still lacks the pinned versions after installing" >&2; exit 1; }
    echo "venv: installed the pinned stack into $VENV"
fi
"$VENV/bin/python" -c 'import sys, torch, transformers
print(f"venv: python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")'

# --- checker --------------------------------------------------------------------------------------------------
repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=("$VENV/bin/python" "$repo/scripts/check_upstream_compat.py" --llava-root "$LLAVA_TREE")
if [ -n "$WORLD" ]; then
    cd "$repo"
    exec "${cmd[@]}" --world "$WORLD"
fi
echo "run the checker with: ${cmd[*]} --world <built tiny world>"
