#!/usr/bin/env python3
"""diffusers' verdict on the LoRA of the training proof: the trigger-word LoRA `wgdit cache` + `wgdit train` make from
tests/fixtures/train/learn/kohya (tools/gen_learn_fixture.py), loaded by diffusers' `load_lora_weights` into the
same tiny pipeline, rendering the same prompt through its own text encoder.

1. Assembles the pipeline folder tests/train/learns.rs trains on (`testing::learn_pipeline("t2i")`) in a temporary
   folder: tests/fixtures/pipeline/t2i with train/learn/vae as its vae/, text/text_encoder and text/tokenizer
   (gunzipped) as text_encoder/ and tokenizer/.
2. Unless tests/fixtures/train/learn/zq_lora.safetensors exists, runs (WGDIT defaults to target/debug/wgdit)
     $WGDIT cache --model <folder> --data tests/fixtures/train/learn/kohya --output <cache> --resolution 1024
     $WGDIT train --model <folder> --data <cache> --output <run> --steps 40 --rank 8 --alpha 8 --lr 2e-2 --seed 1
                  --batch-size 4 --timestep-sampling uniform --weight-decay 0 --checkpointing off
                  --targets <DiffSynth's 12>,proj_out,norm_out.linear,img_mlp.net.0.proj
   (the settings of learns.rs) and copies <run>/lora.safetensors (diffusers/PEFT format) there.
3. diffusers 0.42.1's QwenImagePipeline (float32, CPU, the folder's text encoder and tokenizer) draws
   prompt "zq picture", 32x32, 8 steps, generator seed 5, no CFG, output_type "pt": `image_base`, then after
   `pipe.load_lora_weights(zq_lora.safetensors)`: `image`. Both [1, 3, 32, 32] go to
   tests/fixtures/train/learn/zq_lora.case.safetensors; the script prints their mean colours and asserts the LoRA
   moves the picture toward the pictures' colour (0.86, 0.16, 0.16).

Run from the repository root after building wgdit:
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_learned_lora_fixture.py
"""
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import QwenImagePipeline
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
import gen_pipeline_fixtures as gp  # noqa: E402

torch.set_num_threads(1)
# As tools/gen_text_fixtures.py: the CPU env's CUDA stub crashes transformers' tracing probe.
torch.cuda.is_current_stream_capturing = lambda: False
root = Path("tests/fixtures")
learn = root / "train" / "learn"
lora = learn / "zq_lora.safetensors"
out = learn / "zq_lora.case.safetensors"
TARGET = torch.tensor([0.86, 0.16, 0.16])
DIFFSYNTH_TARGETS = ("to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,"
                     "txt_mlp.net.2,txt_mod.1")
PROMPT, SIDE, STEPS, SEED = "zq picture", 32, 8, 5


def copy_tree(src, dest):
    """Copies src into dest, gunzipping every *.gz."""
    for f in sorted(src.rglob("*")):
        if f.is_dir():
            continue
        to = dest / f.relative_to(src)
        to.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".gz":
            to.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
        else:
            shutil.copyfile(f, to)


def assemble(folder):
    copy_tree(root / "pipeline" / "t2i", folder)
    shutil.rmtree(folder / "vae")
    copy_tree(learn / "vae", folder / "vae")
    copy_tree(root / "text" / "text_encoder", folder / "text_encoder")
    copy_tree(root / "text" / "tokenizer", folder / "tokenizer")


def train_lora(folder, tmp):
    wgdit = os.environ.get("WGDIT", "target/debug/wgdit")
    cache, run = tmp / "cache", tmp / "run"
    cmds = [
        [wgdit, "cache", "--model", str(folder), "--data", str(learn / "kohya"), "--output", str(cache),
         "--resolution", "1024"],
        [wgdit, "train", "--model", str(folder), "--data", str(cache), "--output", str(run), "--steps", "40",
         "--rank", "8", "--alpha", "8", "--lr", "2e-2", "--seed", "1", "--batch-size", "4",
         "--timestep-sampling", "uniform", "--weight-decay", "0", "--checkpointing", "off",
         "--targets", DIFFSYNTH_TARGETS + ",proj_out,norm_out.linear,img_mlp.net.0.proj"],
    ]
    for cmd in cmds:
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
    shutil.copyfile(run / "lora.safetensors", lora)


def draw(pipe):
    g = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad():
        return pipe(prompt=PROMPT, width=SIDE, height=SIDE, num_inference_steps=STEPS, true_cfg_scale=1.0,
                    generator=g, output_type="pt").images.contiguous()


def main():
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = tmp / "pipeline"
        assemble(folder)
        if not lora.exists():
            train_lora(folder, tmp)
        pipe = QwenImagePipeline.from_pretrained(folder, torch_dtype=torch.float32)
        for m in (pipe.transformer, pipe.vae, pipe.text_encoder):
            gp.owned(m.eval())
        pipe.set_progress_bar_config(disable=True)
        base = draw(pipe)
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
        gp.owned(pipe.transformer)
        image = draw(pipe)
    colour = lambda x: x[0].mean(dim=(1, 2))  # noqa: E731
    d0, d1 = (colour(base) - TARGET).norm().item(), (colour(image) - TARGET).norm().item()
    print(f"mean colour {colour(base).tolist()} -> {colour(image).tolist()}: to {TARGET.tolist()} {d0:.3f} -> {d1:.3f}")
    assert d1 < 0.6 * d0, "the LoRA does not move diffusers' picture toward the pictures' colour"
    save_file({"image": image, "image_base": base}, out,
              metadata={"prompt": PROMPT, "size": f"{SIDE}x{SIDE}", "steps": str(STEPS), "seed": str(SEED),
                        "true_cfg_scale": "1.0", "lora": "train/learn/zq_lora.safetensors", "strength": "1.0",
                        "made_by": "tools/gen_learned_lora_fixture.py"})
    gp.canonicalise_header(out)
    assert torch.equal(load_file(out)["image"], image)


if __name__ == "__main__":
    main()
