#!/usr/bin/env python3
"""Reference outputs of a tiny Qwen-Image DiT stored in every weight type wgdit reads (GGUF F16 … Q2_K, fp8).

The model is small but K-quant-shaped: 1 block, 2 heads × 128 (D = 256, so every Linear's input width is a
multiple of the 256-element k-quant super-block), text width 24, 16 packed latent channels. Its weights are a
pure function of their names (splitmix64 of FNV-1a(name) + element index, tests/support/quant_dit.rs computes the
same f32 values bit for bit), so nothing large is committed: the tests rebuild the source weights, quantize them
with wgdit and check the quantized bytes against the SHA-256 recorded here before comparing outputs.

For each type the script runs `wgdit quantize` (the Rust quantizer: gguf-py has no k-quant quantizer), reads the
file back with gguf-py's GGUFReader (names, shapes, types) and dequantizes every tensor with gguf-py (fp8: torch's
float8 casts × scale_weight), loads that into diffusers 0.42.1's QwenImageTransformer2DModel in float32 and runs
the forward. Writes tests/fixtures/quant_dit/{config.json, inputs.safetensors, expected.safetensors}:
  expected: output.<type> [1, S_img, 16] per type and output.source (the f32 source weights); metadata
  sha256.<type> (SHA-256 of every tensor's stored bytes, in name order), weight_rel_l2.<type> (gguf-py's
  dequantized weights vs the source, all quantized tensors), types.<type> (tensor count per stored type).

Run from the repository root after `cargo build --release`:
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_quant_dit_fixtures.py
"""
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import torch
from diffusers import QwenImageTransformer2DModel
from safetensors import safe_open
from safetensors.torch import save_file

CONFIG = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=128,
              num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=[16, 56, 56], guidance_embeds=False)
GGUF_TYPES = ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
FP8_TYPES = [("f8_e4m3", "f8_e4m3", False), ("f8_e5m2", "f8_e5m2", False), ("f8_e4m3_scaled", "f8_e4m3", True)]
MASK64 = (1 << 64) - 1


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def splitmix(x):
    """splitmix64 of a uint64 array (numpy wraps uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def gain(name):
    """Std multiplier of a Linear weight (as tools/gen_dit_fixtures.py: keeps the streams and gates lively)."""
    if name.endswith(("img_mod.1.weight", "txt_mod.1.weight")) or name == "norm_out.linear.weight":
        return 1.5
    if name.endswith(("to_out.0.weight", "to_add_out.weight", "timestep_embedder.linear_2.weight")):
        return 2.0
    return 1.0


def det_values(name, shape):
    """U(-a, a) in f32 with a = √3·gain/√fan_in (std gain/√fan_in) for weights, std 0.1 for biases,
    1 ± 0.2·√3 for norm weights: computed in f32 exactly as quant_dit.rs does."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        idx = np.uint64(fnv1a(name)) + np.arange(n, dtype=np.uint64)
    u = (splitmix(idx) >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    s = np.float32(2) * u - np.float32(1)
    if len(shape) == 2:
        a = np.float32(math.sqrt(3.0) * gain(name) / math.sqrt(shape[1]))
        v = s * a
    elif "norm" in name:
        v = np.float32(1) + s * np.float32(0.2 * math.sqrt(3.0))
    else:
        v = s * np.float32(0.1 * math.sqrt(3.0))
    return v.astype(np.float32).reshape(shape)


def source_model():
    model = QwenImageTransformer2DModel(**CONFIG).eval()
    sd = {k: torch.from_numpy(det_values(k, tuple(v.shape))) for k, v in sorted(model.state_dict().items())}
    model.load_state_dict(sd, strict=True)
    return model, sd


def make_inputs():
    g = torch.Generator().manual_seed(4242)
    img_shapes = [(1, 4, 4)]
    return {
        "hidden_states": torch.randn(1, 16, CONFIG["in_channels"], generator=g),
        "encoder_hidden_states": torch.randn(1, 7, CONFIG["joint_attention_dim"], generator=g),
        "encoder_hidden_states_mask": torch.tensor([[1, 1, 1, 1, 1, 0, 0]], dtype=torch.int64),
        "timestep": torch.tensor([0.6], dtype=torch.float32),
        "img_shapes": torch.tensor(img_shapes, dtype=torch.int64),
    }


def forward(model, inputs):
    shapes = [tuple(int(v) for v in row) for row in inputs["img_shapes"].tolist()]
    with torch.no_grad():
        return model(hidden_states=inputs["hidden_states"], encoder_hidden_states=inputs["encoder_hidden_states"],
                     encoder_hidden_states_mask=inputs["encoder_hidden_states_mask"], timestep=inputs["timestep"],
                     img_shapes=[shapes], return_dict=True).sample


def read_gguf(path, src):
    """gguf-py's view of a wgdit GGUF: dequantized state dict, per-tensor raw bytes, type counts."""
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "qwen_image", "general.architecture"
    sd, raw, types = {}, {}, Counter()
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        assert shape == tuple(src[t.name].shape), f"{t.name}: {shape} vs {tuple(src[t.name].shape)}"
        sd[t.name] = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type))
                                      .astype(np.float32).reshape(shape))
        raw[t.name] = bytes(np.ascontiguousarray(t.data).tobytes())
        types[t.tensor_type.name] += 1
    assert set(sd) == set(src), f"tensors differ: {set(sd) ^ set(src)}"
    return sd, raw, types


def read_fp8(path, src):
    """A ComfyUI fp8 file dequantized as ComfyUI does: weight.float() × scale_weight."""
    sd, raw, types = {}, {}, Counter()
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        for k in sorted(keys):
            if k == "scaled_fp8" or k.endswith((".scale_weight", ".scale_input")):
                continue
            t = f.get_tensor(k)
            raw[k] = t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.float32 else \
                t.numpy().tobytes()
            v = t.to(torch.float32)
            scale = k.removesuffix(".weight") + ".scale_weight"
            if k.endswith(".weight") and scale in keys:
                v = v * f.get_tensor(scale).to(torch.float32)
            sd[k] = v.reshape(src[k].shape)
            types[str(t.dtype).removeprefix("torch.")] += 1
    assert set(sd) == set(src), f"tensors differ: {set(sd) ^ set(src)}"
    return sd, raw, types


def weight_error(sd, src):
    num = sum(float(((sd[k] - src[k]) ** 2).sum()) for k in src if src[k].ndim == 2)
    den = sum(float((src[k] ** 2).sum()) for k in src if src[k].ndim == 2)
    return math.sqrt(num / den)


def main():
    root = Path(__file__).resolve().parent.parent
    wgdit = root / "target/release/wgdit"
    assert wgdit.exists(), "build first: cargo build --release"
    out = root / "tests/fixtures/quant_dit"
    out.mkdir(parents=True, exist_ok=True)
    model, src = source_model()
    inputs = make_inputs()
    expected = {"output.source": forward(model, inputs).contiguous()}
    meta = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_file({k: v.contiguous() for k, v in src.items()}, tmp / "source.safetensors")
        (tmp / "config.json").write_text(json.dumps({"_class_name": "QwenImageTransformer2DModel", **CONFIG}))
        jobs = [(t, tmp / f"{t}.gguf", [t], read_gguf) for t in GGUF_TYPES]
        jobs += [(n, tmp / f"{n}.safetensors", [t] + (["--scaled"] if s else []), read_fp8) for n, t, s in FP8_TYPES]
        for name, path, args, reader in jobs:
            cmd = [str(wgdit), "quantize", "--input", str(tmp / "source.safetensors"), "--output", str(path),
                   "--type"] + args
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            sd, raw, types = reader(str(path), src)
            m = QwenImageTransformer2DModel(**CONFIG).eval()
            m.load_state_dict(sd, strict=True)
            y = forward(m, inputs).contiguous()
            expected[f"output.{name}"] = y
            h = hashlib.sha256()
            for k in sorted(raw):
                h.update(raw[k])
            meta[f"sha256.{name}"] = h.hexdigest()
            meta[f"weight_rel_l2.{name}"] = f"{weight_error(sd, src):.3e}"
            meta[f"types.{name}"] = json.dumps(dict(sorted(types.items())))
            out_err = float((y - expected["output.source"]).norm() / expected["output.source"].norm())
            print(f"{name:16} weights rel-L2 {meta[f'weight_rel_l2.{name}']}, output vs source {out_err:.3e}, "
                  f"types {meta[f'types.{name}']}", file=sys.stderr)
    (out / "config.json").write_text(json.dumps({"_class_name": "QwenImageTransformer2DModel", **CONFIG},
                                                indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in inputs.items()}, out / "inputs.safetensors", metadata={"model": "quant"})
    save_file(expected, out / "expected.safetensors", metadata=meta)


if __name__ == "__main__":
    main()
