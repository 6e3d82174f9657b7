#!/usr/bin/env bash
# The README's card table: `wgdit plan --json` for 1024² text to image and Edit-2511 with 1 and 3
# references, every GGUF weights type, on 8/12/16/24/48 GB cards (each budget the card's size less
# HEADROOM GiB for the driver and the display), then per card and case the best type that keeps
# every block resident (else Q2_K's streaming) and what BF16 needs (blocks resident, weights streamed
# per step).
#   tools/plan_table.sh [path/to/wgdit]        (default: target/release/wgdit; HEADROOM=0.5)
set -euo pipefail
WGDIT=${1:-target/release/wgdit}
HEADROOM=${HEADROOM:-0.5}
CASES=("qwen-image" "qwen-image-edit-2511 --images 1" "qwen-image-edit-2511 --images 3")
TYPES=(bf16 q8_0 q6_k q5_k q4_k q3_k q2_k)
CARDS=(8 12 16 24 48)
for case in "${CASES[@]}"; do
  for w in "${TYPES[@]}"; do
    for card in "${CARDS[@]}"; do
      budget=$(awk -v c="$card" -v h="$HEADROOM" 'BEGIN { printf "%.2fG", c - h }')
      # shellcheck disable=SC2086 # $case holds the preset and its flags
      "$WGDIT" plan --preset $case --weights "$w" --vram-budget "$budget" --json |
        jq -c --arg case "$case" --arg card "$card" \
          '{case: $case, card: ($card | tonumber), weights, fits, resident_blocks, blocks,
            peak: (.peak_bytes / 1073741824 * 10 | round / 10),
            streamed: (.streamed_bytes_per_step / 1073741824 | round)}'
    done
  done
done | jq -rs --argjson types "$(printf '%s\n' "${TYPES[@]}" | jq -R . | jq -s .)" '
  def cell($rs):
    ([$types[] as $t | $rs[] | select(.weights == $t and .fits and .resident_blocks == .blocks)] | first) as $best
    | ($rs[] | select(.weights == "bf16")) as $bf
    | ($rs[] | select(.weights == "q2_k")) as $q2
    | (if $best != null then "\($best.weights | ascii_upcase) resident (\($best.peak) GiB)"
       else "no type resident; Q2_K: \($q2.resident_blocks)/60 resident, \($q2.streamed) GiB/step streamed" end)
      + (if $best != null and $best.weights == "bf16" then ""
         elif $bf.fits then "; BF16: \($bf.resident_blocks)/60 resident, \($bf.streamed) GiB/step streamed"
         else "; BF16 does not fit" end);
  (group_by(.card)[] | . as $g
   | "| \($g[0].card) GB | " + ([group_by(.case)[] ] | sort_by(.[0].case | length) | map(cell(.)) | join(" | ")) + " |")'
