#!/bin/sh
# Seeds fuzz/corpus/<target>/ from the test fixtures (the corpus itself is not committed):
#   sh fuzz/seed.sh          (from the repository root; safe to rerun, existing entries are kept)
set -eu
cd "$(dirname "$0")/.."
F=tests/fixtures
S=$F/fuzz/seeds
seed() { # seed <target> <file>...
    t=$1; shift
    mkdir -p fuzz/corpus/"$t"
    for f in "$@"; do cp "$f" fuzz/corpus/"$t"/"$(echo "$f" | tr / _)"; done
}
seed model_index $F/pipeline/*/model_index.json
seed scheduler_config $F/pipeline/t2i/scheduler/scheduler_config.json $F/pipeline_math/scheduler_config.json
seed vae_config $F/pipeline/t2i/vae/config.json
seed prompt_embeds $F/pipeline/cases/t2i_cfg.safetensors
seed noise $F/pipeline/cases/t2i_cfg.safetensors
seed vae_latents $F/pipeline/cases/vae_decode.safetensors
seed image $F/pipeline/inputs/ref_a.png $F/pipeline_math/images/photo.jpg $F/pipeline_math/images/lossless.webp
seed dit_inputs $F/dit/cases/*.inputs.safetensors
seed safetensors $F/dit/cases/odd_grid.inputs.safetensors $F/lora/peft.safetensors $S/train_sample.safetensors \
    $F/pipeline/cases/vae_decode.safetensors
seed gguf $F/gguf/*.gguf $F/fuzz/gguf/*.gguf
seed dit_checkpoint $F/dit/tiny/diffusion_pytorch_model.safetensors $F/dit/tiny-comfy.safetensors \
    $F/dit/tiny-merged.safetensors
seed sharded_index $F/dit/tiny-sharded/diffusion_pytorch_model.safetensors.index.json
seed dit_config $F/dit/tiny/config.json $F/dit/tiny-sharded/config.json $F/dit/tiny-2511/config.json
seed lora $F/lora/*.safetensors
seed lora_keys $S/lora_keys.txt
seed train_metadata $S/metadata.jsonl
seed dataset_csv $S/metadata.csv
seed train_sample $S/train_sample.safetensors
seed tokenizer_json $S/tokenizer.json
seed tokenizer_slow $S/tokenizer_slow.bin
seed text_encoder_config $F/text/text_encoder/config.json
seed processor_config $F/text/processor/preprocessor_config.json
mkdir -p fuzz/corpus/text_encoder_checkpoint
gunzip -c $F/text/text_encoder/model.safetensors.gz >fuzz/corpus/text_encoder_checkpoint/tiny.safetensors
mkdir -p fuzz/corpus/prompt
printf 'A cat' >fuzz/corpus/prompt/plain
printf '一只猫 🐈‍⬛ <|im_end|>\n<|image_pad|> 12345 '"'"'LL' >fuzz/corpus/prompt/mixed
printf '  \t\r\n\n  <|im_start' >fuzz/corpus/prompt/space
seed train_state $S/state.json
seed train_moments $S/optimizer.safetensors
# the JSON header of a few safetensors files, and every LoRA fixture's key list
python3 - "$F" <<'PY'
import json, os, struct, sys
F = sys.argv[1]
for src in ["dit/cases/odd_grid.inputs.safetensors", "lora/kohya.safetensors", "lora/comfy.safetensors",
            "fuzz/seeds/train_sample.safetensors", "dit/tiny-merged.safetensors"]:
    b = open(os.path.join(F, src), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    name = src.replace("/", "_")
    os.makedirs("fuzz/corpus/safetensors_header", exist_ok=True)
    open(f"fuzz/corpus/safetensors_header/{name}.json", "wb").write(b[8:8 + n])
    if src.startswith("lora/"):
        keys = [k for k in json.loads(b[8:8 + n]) if k != "__metadata__"]
        open(f"fuzz/corpus/lora_keys/{name}.txt", "w").write("\n".join(keys) + "\n")
PY
for t in fuzz/corpus/*; do echo "$t: $(ls "$t" | wc -l) seeds"; done
