#!/usr/bin/env bash
# CUDA-parity suite (issue 3 §7; docs/cuda-parity.md): diffusers references (CUDA when torch sees a GPU, else CPU)
# for f32 and bf16 weights, `wgdit forward` in all three modes on the same inputs, `wgdit bench dispatches` for
# wgdit's time per forward, and one table: weights × mode → rel-L2, max-abs, wgdit ms, PyTorch ms, ratio.
#
# usage: tools/cuda_parity/run.sh [--build] [--small] [--work DIR] [--dtypes "f32 bf16"] [--runs N]
#                                 [--reuse] [--families "coop f16 coop-emulated"] [-- extra make_reference.py flags]
#   --build    cargo build --release --bin wgdit first (honours CARGO_TARGET_DIR)
#   --small    the CPU/lavapipe size: 2 blocks, width 256 = 4 heads × 64, 16×16 grid, 32 text tokens
#   --work     where models, inputs, outputs and the table go (default /tmp/wgdit-cuda-parity)
#   --reuse    keep references already in WORK (same flags!) instead of remaking them
#   --families the mixed-precision kernel families to check after the f32 table (docs/kernels.md): each runs
#              `wgdit forward --qkv merged --kernels F` (rel-L2 bound 2e-3 vs the f32 reference) and
#              `wgdit bench dispatches --kernels F`; a family the adapter lacks is reported and skipped.
#              `wgdit bench kernels --json` (every variant) goes to WORK/kernels.json.
# env: WGDIT   the wgdit binary (default ${CARGO_TARGET_DIR:-target}/release/wgdit)
#      PYTHON  python with torch + diffusers 0.42.x, may be a command with words (default python3), e.g.
#              PYTHON="env LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python"
#      WGDIT_ADAPTER / WGDIT_BACKEND pick wgdit's adapter (see `wgdit devices`)
# Exit status: compare.py's (1 when a mode fails or exceeds rel-L2 1e-4), after the whole table is printed.
set -uo pipefail
cd "$(dirname "$0")/../.."
# The f32 table is the portable kernels' (issue 3: rel-L2 1e-4); mixed families are checked separately below.
export WGDIT_KERNELS=portable

build=0 reuse=0 work=/tmp/wgdit-cuda-parity dtypes="f32 bf16" runs=5 size=() families="coop f16 coop-emulated"
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=1 ;;
        --small) size=(--heads 4 --head-dim 64 --axes 16 24 24 --grid 16 16 --text-tokens 32) ;;
        --work) work=$2; shift ;;
        --dtypes) dtypes=$2; shift ;;
        --runs) runs=$2; shift ;;
        --reuse) reuse=1 ;;
        --families) families=$2; shift ;;
        --) shift; break ;;
        *) echo "run.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
extra=("$@")
WGDIT=${WGDIT:-${CARGO_TARGET_DIR:-target}/release/wgdit}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ $build = 1 ]; then
    cargo build --release --bin wgdit || exit 1
fi
[ -x "$WGDIT" ] || { echo "run.sh: no wgdit binary at $WGDIT (set WGDIT, or pass --build)" >&2; exit 1; }
$PYTHON -c "import torch, diffusers, safetensors, numpy" || {
    echo "run.sh: PYTHON=$PYTHON lacks torch/diffusers/safetensors/numpy (docs/cuda-parity.md: carrying wheels)" >&2
    exit 1
}
mkdir -p "$work"
log=$work/run.log
: >"$log"
say() { echo "$@" | tee -a "$log"; }

say "== $(date -u +%FT%TZ) wgdit $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($WGDIT)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
"$WGDIT" devices 2>&1 | tee -a "$log"
$PYTHON -c "import torch, diffusers; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() \
else 'cpu', 'diffusers', diffusers.__version__)" 2>&1 | tee -a "$log"

for dt in $dtypes; do
    case_dir=$work/$dt
    if [ $reuse = 1 ] && [ -f "$case_dir/reference.safetensors" ]; then
        say "== $dt: reusing $case_dir"
    else
        say "== $dt: diffusers reference"
        rm -rf "$case_dir"
        $PYTHON tools/cuda_parity/make_reference.py --out "$case_dir" --dtype "$dt" --runs "$runs" \
            "${size[@]}" "${extra[@]}" 2>&1 | tee -a "$log" || { say "make_reference.py failed for $dt"; continue; }
    fi
    rm -f "$case_dir"/wgdit-*.safetensors "$case_dir/bench.json"
    for mode in standard merged fused; do
        say "== $dt: wgdit forward --qkv $mode"
        "$WGDIT" forward --model "$case_dir/model" --inputs "$case_dir/inputs.safetensors" \
            --output "$case_dir/wgdit-$mode.safetensors" --qkv "$mode" 2>&1 | tee -a "$log" \
            || say "wgdit forward --qkv $mode failed for $dt"
    done
    # The bench draws its own random inputs of the same shape (unmasked, sigma 0.5); only its timing is used.
    read -r s_img s_txt < <($PYTHON -c "
from safetensors import safe_open
with safe_open('$case_dir/inputs.safetensors', 'np') as f:
    print(f.get_slice('hidden_states').get_shape()[1], f.get_slice('encoder_hidden_states').get_shape()[1])")
    say "== $dt: wgdit bench dispatches --tokens $s_img --text-tokens $s_txt --runs $runs"
    "$WGDIT" bench dispatches --model "$case_dir/model" --tokens "$s_img" --text-tokens "$s_txt" --runs "$runs" \
        --json >"$case_dir/bench.json" 2> >(tee -a "$log" >&2) || say "wgdit bench failed for $dt"
done

for dt in $dtypes; do
    case_dir=$work/$dt
    [ -f "$case_dir/reference.safetensors" ] || continue
    for fam in $families; do
        say "== $dt: wgdit forward --qkv merged --kernels $fam"
        rm -f "$case_dir/wgdit-merged-$fam.safetensors"
        if WGDIT_KERNELS=$fam "$WGDIT" forward --model "$case_dir/model" --inputs "$case_dir/inputs.safetensors" \
            --output "$case_dir/wgdit-merged-$fam.safetensors" --qkv merged 2>&1 | tee -a "$log"; then
            $PYTHON -c "
import numpy as np, sys
from safetensors.numpy import load_file
got = load_file('$case_dir/wgdit-merged-$fam.safetensors')['output'].astype(np.float64)
want = load_file('$case_dir/reference.safetensors')['output'].astype(np.float64)
r = np.linalg.norm(got - want) / np.linalg.norm(want)
print(f'$dt merged $fam: rel-L2 {r:.3e} max-abs {np.abs(got - want).max():.3e}', 'ok' if r <= 2e-3 else 'FAIL')
sys.exit(0 if r <= 2e-3 else 1)" 2>&1 | tee -a "$log"
            WGDIT_KERNELS=$fam "$WGDIT" bench dispatches --model "$case_dir/model" --tokens "$s_img" \
                --text-tokens "$s_txt" --runs "$runs" --json >"$case_dir/bench-$fam.json" 2> >(tee -a "$log" >&2) \
                && say "$dt $fam: $(cat "$case_dir/bench-$fam.json" | tr '\n' ' ')"
        else
            say "wgdit forward --kernels $fam failed for $dt (see above: a family the adapter lacks is refused)"
        fi
    done
done
say "== wgdit bench kernels --json"
WGDIT_KERNELS= "$WGDIT" bench kernels --json >"$work/kernels.json" 2> >(tee -a "$log" >&2) \
    && cat "$work/kernels.json" | tee -a "$log" || say "wgdit bench kernels failed"

say "== table (rel-L2 / max-abs vs diffusers; ms per forward, mean of $runs after warm-up)"
cases=()
for dt in $dtypes; do [ -f "$work/$dt/reference.safetensors" ] && cases+=("$work/$dt"); done
[ ${#cases[@]} -gt 0 ] || { say "no reference was made"; exit 1; }
$PYTHON tools/cuda_parity/compare.py "${cases[@]}" --json "$work/results.json" | tee "$work/table.md"
status=${PIPESTATUS[0]}
cat "$work/table.md" >>"$log"
echo "(table: $work/table.md, log: $log)"
exit "$status"
