#!/usr/bin/env python3
"""gguf-py's verdict on GGUF files that `wgdit quantize` wrote.

For each file, gguf-py's GGUFReader must find every source tensor (ComfyUI prefix stripped, nothing else),
with the source's shape (ne reversed), the GGML type city96's rules give (reimplemented here from
docs/quantize.md, independently of wgdit's code), city96's metadata (general.architecture = qwen_image,
general.quantization_version = 2, general.file_type = llama.cpp's LlamaFileType), and values that
gguf.quants.dequantize brings back within a per-type bound of the source. Where gguf-py has a quantizer
(Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, BF16, F16), wgdit's bytes must equal gguf-py's bytes for the same values.

Two modes:
  # a synthetic Qwen-Image-named bf16 checkpoint, quantized by the wgdit binary to every GGUF type
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/check_quantize_with_gguf.py \\
      --wgdit target/debug/wgdit
  # one file against its source (e.g. the real model)
  ... tools/check_quantize_with_gguf.py --source model.safetensors --gguf model-Q4_K.gguf --type q4_k
"""
import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import load_file, save_file

PREFIXES = ["model.diffusion_model.", "diffusion_model."]
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k": 12,
             "q4_k": 15, "q5_k": 17, "q6_k": 18, "bf16": 32}
# rel-L2 bounds on normal weights: ~1/(2^bits) scaled by the format's block statistics
BOUND = {"F32": 0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.02, "Q5_0": 0.05, "Q5_1": 0.05,
         "Q5_K": 0.05, "Q4_0": 0.1, "Q4_1": 0.1, "Q4_K": 0.1, "Q3_K": 0.25, "Q2_K": 0.5}
PY_QUANT = {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16, Q.F16}


def planned(name, shape, target):
    """docs/quantize.md's rules, without --keep."""
    numel = int(np.prod(shape))
    if len(shape) <= 1 or numel <= 1024 or name.startswith(("img_in.", "proj_out.")):
        t = "F32"
    elif target.upper() not in ("F32", "F16", "BF16") and name.startswith(("txt_in.", "time_text_embed.", "norm_out.")):
        t = "F16"
    else:
        t = target.upper()
    block = gguf.GGML_QUANT_SIZES[Q[t]][0]
    return t if shape[-1] % block == 0 else "F16"


def strip(sd):
    for p in PREFIXES:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def check(source, path, target):
    src = {k: v.float().numpy() for k, v in strip(load_file(str(source))).items()}
    r = gguf.GGUFReader(str(path))
    field = lambda k: r.fields[k].contents() if k in r.fields else None  # noqa: E731
    problems = []
    if field("general.architecture") != "qwen_image":
        problems.append(f"general.architecture is {field('general.architecture')!r}")
    if field("general.quantization_version") != 2:
        problems.append(f"general.quantization_version is {field('general.quantization_version')}")
    if field("general.file_type") != FILE_TYPE[target]:
        problems.append(f"general.file_type is {field('general.file_type')}, expected {FILE_TYPE[target]}")
    names = [t.name for t in r.tensors]
    if sorted(names) != sorted(src):
        problems.append(f"tensor names differ: extra {sorted(set(names) - set(src))}, missing {sorted(set(src) - set(names))}")
    stats = {}
    for t in r.tensors:
        x = src.get(t.name)
        if x is None:
            continue
        shape = [int(d) for d in reversed(t.shape.tolist())]
        want = planned(t.name, list(x.shape), target)
        if shape != list(x.shape):
            problems.append(f"{t.name}: shape {shape}, source {list(x.shape)}")
        if t.tensor_type.name != want:
            problems.append(f"{t.name}: type {t.tensor_type.name}, the rules say {want}")
        y = gguf.quants.dequantize(t.data, t.tensor_type).reshape(x.shape)
        err = float(np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-30))
        if err > BOUND[t.tensor_type.name]:
            problems.append(f"{t.name}: {t.tensor_type.name} rel-L2 {err:.3e} > {BOUND[t.tensor_type.name]}")
        if t.tensor_type in PY_QUANT:
            ref = gguf.quants.quantize(x, t.tensor_type)
            if ref.tobytes() != np.asarray(t.data).tobytes():
                problems.append(f"{t.name}: {t.tensor_type.name} bytes differ from gguf-py's quantize")
        s = stats.setdefault(t.tensor_type.name, [0, 0.0, 0.0, 0])
        s[0] += 1
        s[1] += float(np.sum((y - x).astype(np.float64) ** 2))
        s[2] += float(np.sum(x.astype(np.float64) ** 2))
        s[3] += int(t.n_bytes)
    rows = ", ".join(f"{k} {v[0]} tensors {np.sqrt(v[1] / v[2]):.3e}" for k, v in sorted(stats.items()))
    print(f"{path.name}: {len(names)} tensors, gguf-py reads: {rows}")
    for p in problems:
        print(f"  PROBLEM {p}")
    return not problems


def synthetic(path):
    """The checkpoint of tests/weights/quantize.rs's shapes, bf16, under the ComfyUI prefix."""
    g = torch.Generator().manual_seed(7)
    shapes = {
        "img_in.weight": [256, 64], "img_in.bias": [256], "txt_in.weight": [256, 64],
        "time_text_embed.timestep_embedder.linear_1.weight": [256, 256], "norm_out.linear.weight": [512, 256],
        "proj_out.weight": [64, 256], "transformer_blocks.0.attn.to_q.weight": [256, 256],
        "transformer_blocks.0.attn.to_q.bias": [256], "transformer_blocks.0.attn.to_k.weight": [256, 256],
        "transformer_blocks.0.attn.to_v.weight": [256, 256], "transformer_blocks.0.attn.norm_q.weight": [128],
        "transformer_blocks.0.attn.to_out.0.weight": [32, 32],
        "transformer_blocks.0.img_mlp.net.0.proj.weight": [512, 256],
        "transformer_blocks.0.img_mlp.net.2.weight": [256, 512], "transformer_blocks.0.img_mod.1.weight": [96, 96],
        "transformer_blocks.0.txt_mlp.net.2.weight": [64, 100],
    }
    sd = {PREFIXES[0] + k: (torch.randn(s, generator=g) * 0.05).to(torch.bfloat16) for k, s in shapes.items()}
    save_file(sd, str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wgdit", default="target/debug/wgdit", help='the binary, or a command: "cargo run -q --"')
    ap.add_argument("--source")
    ap.add_argument("--gguf")
    ap.add_argument("--type")
    a = ap.parse_args()
    if a.gguf:
        sys.exit(0 if check(Path(a.source), Path(a.gguf), a.type) else 1)
    ok = True
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "qwen_image_bf16.safetensors"
        synthetic(src)
        for target in FILE_TYPE:
            out = Path(d) / f"qwen_image-{target.upper()}.gguf"
            run = subprocess.run([*shlex.split(a.wgdit), "quantize", "--input", str(src), "--output", str(out), "--type", target],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{out.name}: wgdit quantize failed: {run.stderr.strip().splitlines()[:2]}")
                ok = False
                continue
            ok &= check(src, out, target)
    print("all files pass" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
