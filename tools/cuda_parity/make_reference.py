#!/usr/bin/env python3
"""Reference for the CUDA-parity suite (issue 3 §7): a diffusers QwenImageTransformer2DModel with random weights,
its inputs in `wgdit forward`'s contract, its float32 output, and PyTorch's time per forward.

The output is computed by diffusers 0.42.x itself (nothing here reimplements the model), in float32, on CUDA when
`torch.cuda.is_available()` and on the CPU otherwise. With `--dtype bf16` the weights are rounded to bf16 and saved
as bf16; the reference still computes in float32 with those rounded weights (as tools/gen_dit_fixtures.py does), so
the comparison measures wgdit's arithmetic, not the rounding of the checkpoint.

Writes, under OUT:
  model/config.json, model/diffusion_pytorch_model.safetensors   (save_pretrained; weights in --dtype)
  inputs.safetensors      hidden_states [1, S_img, in_channels] f32, encoder_hidden_states [1, S_txt, joint] f32,
                          timestep [1] f32 (sigma), img_shapes [1, 3] i64 (+ encoder_hidden_states_mask with --pad-text)
  reference.safetensors   output [1, S_img, patch²·out_channels] f32; metadata: device, torch_ms (mean of --runs
                          forwards after --warmup, each followed by a device sync), versions, config, dtype

Defaults are the issue's size: 2 blocks at the real width 3072 = 24 heads × 128, joint_attention_dim 3584,
in_channels 64, a 32×32 patch grid (1024 image tokens) and 64 text tokens (~2.8 GB of f32 weights). Shrink with
--heads/--head-dim/--axes/--joint-dim/--grid/--text-tokens for a CPU run. Same seed → same weights and inputs for
both dtypes. Run from the repository root:
  python tools/cuda_parity/make_reference.py --out /tmp/wgdit-cuda-parity/f32 --dtype f32
"""
import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn
import diffusers
from diffusers import QwenImageTransformer2DModel
from diffusers.models.normalization import RMSNorm
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file

WEIGHT_SEED = 20261127
INPUT_SEED = 20261128


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to (re)write: model/, inputs, reference")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="stored weight dtype")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--axes", type=int, nargs=3, default=[16, 56, 56], help="RoPE axes dims; sum = --head-dim")
    ap.add_argument("--joint-dim", type=int, default=3584, help="joint_attention_dim (text feature width)")
    ap.add_argument("--in-channels", type=int, default=64)
    ap.add_argument("--out-channels", type=int, default=16)
    ap.add_argument("--grid", type=int, nargs=2, default=[32, 32], metavar=("H", "W"), help="patch grid")
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--pad-text", type=int, default=0,
                    help="mask out the last N text tokens (writes encoder_hidden_states_mask); 0 = no mask")
    ap.add_argument("--timestep", type=float, default=0.5, help="sigma in [0, 1]")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5, help="timed forwards (mean)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    a = ap.parse_args()
    if sum(a.axes) != a.head_dim:
        ap.error(f"--axes {a.axes} sum to {sum(a.axes)}, but --head-dim is {a.head_dim}")
    if a.head_dim > 128:
        ap.error("wgdit's attention takes head_dim <= 128")
    return a


def config_of(a):
    return dict(patch_size=2, in_channels=a.in_channels, out_channels=a.out_channels, num_layers=a.layers,
                attention_head_dim=a.head_dim, num_attention_heads=a.heads, joint_attention_dim=a.joint_dim,
                axes_dims_rope=list(a.axes), guidance_embeds=False)


def linear_gain(module_name):
    """Std multiplier c in W ~ N(0, c²/fan_in), the rule of tools/gen_dit_fixtures.py (chosen there by measuring
    every intermediate): modulation and norm_out 1.5 so shift/scale/gate are O(0.5), output projections 2.0 so
    the gated residual branches visibly move the streams. W/sqrt(fan_in) keeps it width-independent."""
    if module_name.endswith(("img_mod.1", "txt_mod.1")) or module_name == "norm_out.linear":
        return 1.5
    if module_name.endswith(("to_out.0", "to_add_out", "timestep_embedder.linear_2")):
        return 2.0
    return 1.0


def randomise(model, seed):
    """Every parameter re-drawn on the CPU from one seeded generator (device-independent): Linear
    W ~ N(0, c²/fan_in), b ~ N(0, 0.1²); RMSNorm weight ~ 1 + 0.2·N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            module_name, kind = name.rsplit(".", 1)
            module = modules[module_name]
            if isinstance(module, nn.Linear) and kind == "weight":
                p.copy_(torch.randn(p.shape, generator=g) * (linear_gain(module_name) / math.sqrt(p.shape[1])))
            elif isinstance(module, nn.Linear) and kind == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif isinstance(module, RMSNorm) and kind == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"no init rule for parameter {name}")


def make_inputs(a):
    g = torch.Generator().manual_seed(INPUT_SEED)
    h, w = a.grid
    inputs = {
        "hidden_states": torch.randn(1, h * w, a.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, a.text_tokens, a.joint_dim, generator=g),
        "timestep": torch.tensor([a.timestep], dtype=torch.float32),
        "img_shapes": torch.tensor([[1, h, w]], dtype=torch.int64),
    }
    if a.pad_text:
        mask = torch.ones(1, a.text_tokens, dtype=torch.int64)
        mask[:, a.text_tokens - a.pad_text:] = 0
        inputs["encoder_hidden_states_mask"] = mask
    return inputs


def forward(model, inputs, dtype=torch.float32):
    """diffusers forward on a CLI-contract inputs dict (img_shapes shared by the batch)."""
    batch = inputs["hidden_states"].shape[0]
    shapes = [tuple(int(v) for v in row) for row in inputs["img_shapes"].tolist()]
    return model(hidden_states=inputs["hidden_states"].to(dtype),
                 encoder_hidden_states=inputs["encoder_hidden_states"].to(dtype),
                 encoder_hidden_states_mask=inputs.get("encoder_hidden_states_mask"), timestep=inputs["timestep"],
                 img_shapes=[shapes] * batch, return_dict=True).sample


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward(model, inputs, device, warmup, runs, dtype=torch.float32):
    """Mean wall ms of `runs` forwards after `warmup`, each followed by a device sync (as `wgdit bench` does)."""
    with torch.no_grad():
        for _ in range(warmup):
            forward(model, inputs, dtype)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(runs):
            forward(model, inputs, dtype)
            sync(device)
    return (time.perf_counter() - t0) * 1e3 / max(runs, 1)


def block_rms(model, inputs):
    """rms of each block's (text, image) output: the random weights must keep activations O(1)."""
    caps, hooks = [], []
    for i, block in enumerate(model.transformer_blocks):
        hook = lambda _m, _i, out, i=i: caps.append((i, *(t.float().pow(2).mean().sqrt().item() for t in out)))
        hooks.append(block.register_forward_hook(hook))
    try:
        with torch.no_grad():
            forward(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return caps


def build_model(a):
    model = QwenImageTransformer2DModel(**config_of(a)).eval()
    randomise(model, WEIGHT_SEED)
    if a.dtype == "bf16":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))  # the stored values, computed in f32
    return model


def save_model(model, a):
    """save_pretrained in the stored dtype; bf16 is exact (the f32 values were already rounded to bf16)."""
    if a.dtype == "bf16":
        model.to(torch.bfloat16).save_pretrained(a.out / "model", safe_serialization=True)
        model.to(torch.float32)
    else:
        model.save_pretrained(a.out / "model", safe_serialization=True)


def pick_device(choice):
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device):
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def main():
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    # Full float32 on CUDA: no TF32 in matmuls (a 1e-3 error would swamp the comparison).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    diffusers_logging.set_verbosity_error()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_model(a)
    save_model(model, a)
    inputs = make_inputs(a)
    save_file(inputs, a.out / "inputs.safetensors", metadata={"seed": str(INPUT_SEED)})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f} M params ({a.dtype} stored) in {time.perf_counter() - t0:.1f} s")

    device = pick_device(a.device)
    model = model.to(device)
    dev_inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        output = forward(model, dev_inputs).float().cpu().contiguous()
    rms = [f"block {i}: txt {t:.2f} img {m:.2f}" for i, t, m in block_rms(model, dev_inputs)]
    print(f"reference on {device_name(device)}: output {tuple(output.shape)} rms {output.pow(2).mean().sqrt():.3f}; "
          + "; ".join(rms))
    torch_ms = time_forward(model, dev_inputs, device, a.warmup, a.runs)
    meta = {"device": device_name(device), "torch_ms": f"{torch_ms:.3f}", "torch_compute": "float32",
            "warmup": str(a.warmup), "runs": str(a.runs), "weights_dtype": a.dtype,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "config": json.dumps(config_of(a)),
            "s_img": str(inputs["hidden_states"].shape[1]), "s_txt": str(a.text_tokens), "pad_text": str(a.pad_text)}
    line = f"torch f32 forward: {torch_ms:.2f} ms (mean of {a.runs} after {a.warmup} warm-up)"
    if a.dtype == "bf16":
        # How diffusers is usually run with a bf16 checkpoint: bf16 weights and activations. Timing only.
        bf16_ms = time_forward(model.to(torch.bfloat16), dev_inputs, device, a.warmup, a.runs, torch.bfloat16)
        meta["torch_bf16_ms"] = f"{bf16_ms:.3f}"
        line += f"; native bf16 forward: {bf16_ms:.2f} ms"
    print(line)
    save_file({"output": output}, a.out / "reference.safetensors", metadata=meta)


if __name__ == "__main__":
    main()
