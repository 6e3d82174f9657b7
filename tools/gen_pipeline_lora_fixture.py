#!/usr/bin/env python3
"""diffusers' verdict on a LoRA written by `wgdit train`, at the picture level.

Input: tests/fixtures/train/t2i_lora.safetensors, a LoRA on the transformer of the tiny text-to-image pipeline
(tests/fixtures/pipeline/t2i; D = 16, so train/wgdit_trained_lora.safetensors, made for the D = 32 dit/tiny model,
does not fit it). When the file is missing, the script writes 2 synthetic samples (torch.randn with seed 5:
latents [4, 8, 8], prompt_embeds [5, 24]) into a temporary folder and runs
  $WGDIT train --model tests/fixtures/pipeline/t2i --data <samples> --output <dir> --steps 30 --rank 4 --alpha 8
               --lr 1e-2 --seed 3 --timestep-sampling uniform --weight-decay 0
(WGDIT defaults to target/debug/wgdit), then copies <dir>/lora.safetensors (diffusers/PEFT format) here.

Output: tests/fixtures/train/t2i_lora.case.safetensors: the inputs of pipeline/cases/t2i_cfg (prompt embeddings and
masks, negative ones, `noise`, seed 42, 48x32, 3 steps, true_cfg_scale 4) and
- `image` [1, 3, 32, 48]: diffusers 0.42.1's QwenImagePipeline (the t2i folder, float32, text_encoder=None) after
  `pipe.load_lora_weights(<the LoRA>)`, `output_type="pt"`;
- `image_base` [1, 3, 32, 48]: the same call without the LoRA (asserted equal to cases/t2i_cfg's `image`).

Run from the repository root:
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_pipeline_lora_fixture.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
import gen_pipeline_fixtures as gp  # noqa: E402

torch.set_num_threads(1)
root = Path("tests/fixtures")
lora = root / "train" / "t2i_lora.safetensors"
out = root / "train" / "t2i_lora.case.safetensors"
CASE = "t2i_cfg"
INPUTS = ("prompt_embeds", "prompt_embeds_mask", "negative_prompt_embeds", "negative_prompt_embeds_mask",
          "latents_init", "noise")


def train_lora():
    wgdit = os.environ.get("WGDIT", "target/debug/wgdit")
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        data.mkdir()
        g = torch.Generator().manual_seed(5)
        lines = []
        for i in range(2):
            sample = {"latents": torch.randn(4, 8, 8, generator=g), "prompt_embeds": torch.randn(5, 24, generator=g)}
            save_file(sample, data / f"sample{i}.safetensors")
            lines.append(json.dumps({"file": f"sample{i}.safetensors", "caption": f"synthetic sample {i}"}))
        (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        cmd = [wgdit, "train", "--model", str(root / "pipeline" / "t2i"), "--data", str(data), "--output", str(run),
               "--steps", "30", "--rank", "4", "--alpha", "8", "--lr", "1e-2", "--seed", "3",
               "--timestep-sampling", "uniform", "--weight-decay", "0"]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
        shutil.copyfile(run / "lora.safetensors", lora)


def generate(pipe, tensors):
    rec, _ = gp.run_case(pipe, CASE, tensors, {})
    return rec["image"].contiguous()


def main():
    if not lora.exists():
        train_lora()
    case = load_file(root / "pipeline" / "cases" / f"{CASE}.safetensors")
    tensors = {k: case[k] for k in INPUTS}
    pipe = gp.load_folder(root / "pipeline" / "t2i", "t2i")
    base = generate(pipe, tensors)
    assert torch.equal(base, case["image"]), "the no-LoRA run does not reproduce cases/t2i_cfg"
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    gp.owned(pipe.transformer)
    image = generate(pipe, tensors)
    moved = ((image - base).norm() / base.norm()).item()
    assert moved > 1e-2, f"the LoRA moves the picture by only {moved:.2e}"
    save_file({**tensors, "image": image, "image_base": base}, out,
              metadata={"case": CASE, "folder": "t2i", "lora": "train/t2i_lora.safetensors", "strength": "1.0",
                        "made_by": "tools/gen_pipeline_lora_fixture.py"})
    gp.canonicalise_header(out)
    again = load_file(out)
    assert torch.equal(again["image"], image)
    print(f"image {tuple(image.shape)}: the LoRA moves it by {moved:.4f} relative (L2)")


if __name__ == "__main__":
    main()
