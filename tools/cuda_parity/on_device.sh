#!/usr/bin/env bash
# Device side (docs/cuda-parity.md): on the NVIDIA machine, after prepare_device.sh here and with .bin, .gl and .whl
# carried. Brings the Vulkan loader if the image has none, installs the diffusers wheel into /tmp/site, points
# Vulkan at the NVIDIA driver, runs the suite at the issue's full size and copies the table, results and log to $OUT.
# usage: bash tools/cuda_parity/on_device.sh [run.sh flags, e.g. --dtypes f32 --runs 10]
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
    export VK_DRIVER_FILES=$icd
fi
chmod +x .bin/wgdit 2>/dev/null
export WGDIT=${WGDIT:-.bin/wgdit} PYTHON=${PYTHON:-python3} WGDIT_ADAPTER=${WGDIT_ADAPTER-nvidia}
work=${WORK:-/tmp/wgdit-cuda-parity}
out=${OUT:-$work-out}
mkdir -p "$out"
tools/cuda_parity/run.sh --work "$work" "$@" 2>&1 | tee "$out/log"
status=${PIPESTATUS[0]}
cp "$work/table.md" "$work/results.json" "$out/" 2>/dev/null
exit "$status"
