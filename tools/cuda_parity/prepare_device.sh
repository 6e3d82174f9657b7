#!/usr/bin/env bash
# Host side of a device run (docs/cuda-parity.md): puts what the NVIDIA machine lacks into three git-ignored
# folders of the repo root, which the device tool's `carry` then names:
#   .bin/wgdit   the release binary built here (x86_64 Linux; glibc 2.36, older than the device image's)
#   .gl/         the Vulkan loader deb (libvulkan1), unpacked there by on_device.sh when no loader is found
#   .whl/        the diffusers 0.42.1 wheel (pure Python; torch, numpy, safetensors, huggingface_hub are there)
# usage: tools/cuda_parity/prepare_device.sh   (WGDIT=path to skip the build; honours CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
WGDIT=${WGDIT:-${CARGO_TARGET_DIR:-target}/release/wgdit}
[ -x "$WGDIT" ] || cargo build --release --bin wgdit
exclude=$(git rev-parse --git-path info/exclude)
for d in .bin .gl .whl; do
    grep -qx "/$d/" "$exclude" 2>/dev/null || echo "/$d/" >>"$exclude"
done
mkdir -p .bin && cp "$WGDIT" .bin/wgdit
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p .gl /tmp/amd64/partial
rm -f .gl/libvulkan1_*.deb
apt-get $o update >/dev/null
(cd .gl && apt-get $o download libvulkan1)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl diffusers==0.42.1
ls .whl | grep -c '^diffusers-' | grep -qx 1 || { echo "keep one diffusers wheel in .whl/" >&2; exit 1; }
du -sh .bin .gl .whl
echo 'now: run(command="bash tools/cuda_parity/on_device.sh", carry=[".bin", ".gl", ".whl"], timeout_s=540)'
