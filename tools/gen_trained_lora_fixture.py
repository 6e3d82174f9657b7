#!/usr/bin/env python3
"""diffusers' verdict on a LoRA that `wgdit train` wrote.

Input: tests/fixtures/train/wgdit_trained_lora.safetensors, written by
  wgdit train --model tests/fixtures/dit/tiny --data <2 synthetic samples> --output <dir> --steps 30 --rank 4
              --alpha 8 --lr 1e-2 --seed 3 --timestep-sampling uniform
(diffusers/PEFT format: `transformer.` keys, alpha in the `lora_adapter_metadata` header.)
Output: tests/fixtures/train/wgdit_trained_lora.expected.safetensors with `output`: diffusers 0.42.1's tiny model
(tests/fixtures/dit/tiny, float32) with that file loaded by `QwenImagePipeline.lora_state_dict` +
`load_lora_into_transformer`, on tests/fixtures/dit/cases/batch_mask.inputs.safetensors.

Run from the repository root:
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_trained_lora_fixture.py
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from gen_dit_fixtures import forward, load_lora_with_diffusers  # noqa: E402

torch.set_num_threads(1)
root = Path("tests/fixtures")
lora = root / "train" / "wgdit_trained_lora.safetensors"
base = load_file(root / "dit" / "tiny" / "diffusion_pytorch_model.safetensors")
model = load_lora_with_diffusers(base, lora.parent, weight_name=lora.name)
inputs = load_file(root / "dit" / "cases" / "batch_mask.inputs.safetensors")
with torch.no_grad():
    out = forward(model, inputs).contiguous()
save_file({"output": out}, root / "train" / "wgdit_trained_lora.expected.safetensors",
          metadata={"inputs": "dit/cases/batch_mask.inputs.safetensors", "lora": "train/wgdit_trained_lora.safetensors",
                    "model": "tiny", "strength": "1.0", "made_by": "tools/gen_trained_lora_fixture.py"})
print("output", tuple(out.shape), "rms", out.pow(2).mean().sqrt().item())
