"""Writes tests/fixtures/quant/blocks.safetensors: GGML block formats decoded by gguf-py and fp8 by torch.

Run: LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_quant_fixtures.py

gguf-py 0.19.0 (`gguf.quants`) ports ggml's reference C, and torch 2.15 gives the fp8 casts. Tensors, for
each of the ten GGML block types T in q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k:
- `T.bytes` U8 [blocks, block_bytes]: valid blocks. Legacy types: gguf-py's quantization of `T.src`, then
  blocks of random quant bytes with random finite f16 scales (and mins). K-quants: random bytes whose f16
  d / dmin fields are overwritten by random finite halves (normal, subnormal, zero, negative).
- `T.values` F32 [blocks, block_elems]: `gguf.quants.dequantize(T.bytes)`.
- legacy types only: `T.src` F32 [blocks, 32] (seeded normals at several scales and hand-made tie cases)
  and `T.quantized` U8: `gguf.quants.quantize(T.src)`.
and for the fp8 formats F in f8_e4m3 f8_e5m2:
- `F.table` F32 [256]: torch's value of every code (`torch.arange(256, dtype=uint8).view(float8)`).
- `F.src` F32 [n]: every midpoint between neighbouring finite values, those nudged one f32 ulp either
  way, random normals at several scales, overflow, infinities and NaN; `F.encoded` U8 [n]: the cast of
  `F.src` as ComfyUI makes it, `src.clamp(-max, max).to(float8)` (round to nearest even, saturating).
"""
import os

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file, save_file

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = os.path.join(root, "tests", "fixtures", "quant", "blocks.safetensors")
rng = np.random.default_rng(20250610)

LEGACY = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}
# name: (type, block bytes, byte offsets of the f16 super-block scales)
KQUANT = {
    "q2_k": (Q.Q2_K, 84, [80, 82]),
    "q3_k": (Q.Q3_K, 110, [108]),
    "q4_k": (Q.Q4_K, 144, [0, 2]),
    "q5_k": (Q.Q5_K, 176, [0, 2]),
    "q6_k": (Q.Q6_K, 210, [208]),
}
LEGACY_HALVES = {"q8_0": [0], "q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2]}


def random_halves(n):
    """Finite f16 scales: mostly normal with random sign and magnitude 2^-12..2^1, then 0, a subnormal, -1."""
    h = (np.exp2(rng.uniform(-12, 1, n)) * rng.choice([-1, 1], n)).astype(np.float16)
    special = np.array([0.0, 2.0**-20, -1.0], dtype=np.float16)
    h[: min(n, 3)] = special[: min(n, 3)]
    return h


def ties_block(name):
    """A block whose scale is 1 and whose values sit on rounding ties of the quantizer."""
    halves = np.arange(-7, 8, dtype=np.float32) + 0.5  # -6.5 .. 7.5
    if name == "q8_0":  # d = 127/127 = 1: roundf ties go away from zero
        core = [127.0, -2.5, 2.5, -0.5, 0.5, 1.5, -1.5, 126.5]
    elif name == "q4_0":  # max = -8: d = 1, q = trunc(x + 8.5)
        core = [-8.0, 8.0, *halves[:8]]
    elif name == "q5_0":  # max = -16: d = 1
        core = [-16.0, 16.0, *(halves * 2)[:8]]
    elif name == "q4_1":  # min 0, max 15: d = 1
        core = [0.0, 15.0, *np.abs(halves)[:8]]
    else:  # q5_1: min 0, max 31
        core = [0.0, 31.0, *(np.abs(halves) * 2)[:8]]
    b = np.zeros(32, dtype=np.float32)
    b[: len(core)] = core
    return b


def legacy_src(name):
    blocks = [rng.standard_normal((2, 32)) * s for s in (1e-3, 0.02, 1.0, 300.0)]
    shifted = rng.standard_normal((1, 32)) * 0.1 + 2.0  # all positive: exercises min > 0
    special = np.stack([
        np.zeros(32),  # d = 0
        np.full(32, 0.75),  # constant block
        np.eye(32)[5] * -3.0,  # one non-zero, negative
        ties_block(name),
    ])
    return np.concatenate(blocks + [shifted, special]).astype(np.float32)


def random_legacy_blocks(name, qtype, n):
    nbytes = gguf.constants.GGML_QUANT_SIZES[qtype][1]
    raw = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    for off in LEGACY_HALVES[name]:
        raw[:, off:off + 2] = random_halves(n).view(np.uint8).reshape(n, 2)
    return raw


def random_kquant_blocks(nbytes, offsets, n):
    raw = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    for off in offsets:
        raw[:, off:off + 2] = random_halves(n).view(np.uint8).reshape(n, 2)
    return raw


def fp8_cases(dt, table):
    finite = np.unique(table[np.isfinite(table) & (table >= 0)].astype(np.float64))
    mid = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)
    up = np.nextafter(mid, np.float32(np.inf))
    down = np.nextafter(mid, np.float32(0))
    ties = np.concatenate([mid, up, down])
    fmax = float(torch.finfo(dt).max)
    normal = np.concatenate([rng.standard_normal(64) * s for s in (1e-3, 1.0, fmax / 4)])
    special = [fmax * 1.01, fmax * 1.2, fmax * 4, 1e30, np.inf, np.nan, 0.0, -0.0, 1e-30]
    src = np.concatenate([ties, -ties, normal, special, [-v for v in special]]).astype(np.float32)
    x = torch.from_numpy(src)
    enc = x.clamp(-fmax, fmax).to(dt).view(torch.uint8).numpy()
    if dt == torch.float8_e4m3fn:  # torch 2.15 already saturates E4M3 (not E5M2): the clamp changes nothing
        assert (x.to(dt).view(torch.uint8).numpy() == enc).all()
    return src, enc


t = {}
for name, qtype in LEGACY.items():
    src = legacy_src(name)
    quantized = gguf.quants.quantize(src, qtype)
    raw = random_legacy_blocks(name, qtype, 8)
    blocks = np.concatenate([quantized, raw])
    t[f"{name}.src"] = src
    t[f"{name}.quantized"] = quantized
    t[f"{name}.bytes"] = blocks
    t[f"{name}.values"] = gguf.quants.dequantize(blocks, qtype)

for name, (qtype, nbytes, offsets) in KQUANT.items():
    blocks = random_kquant_blocks(nbytes, offsets, 6)
    t[f"{name}.bytes"] = blocks
    t[f"{name}.values"] = gguf.quants.dequantize(blocks, qtype)

for name, dt in {"f8_e4m3": torch.float8_e4m3fn, "f8_e5m2": torch.float8_e5m2}.items():
    table = torch.arange(256, dtype=torch.uint8).view(dt).float().numpy()
    t[f"{name}.table"] = table
    t[f"{name}.src"], t[f"{name}.encoded"] = fp8_cases(dt, table)

t = {k: np.ascontiguousarray(v) for k, v in t.items()}
for k, v in t.items():
    assert v.dtype in (np.uint8, np.float32), (k, v.dtype)
    if v.dtype == np.float32 and not k.endswith((".table", ".src")):
        assert np.isfinite(v).all(), k
os.makedirs(os.path.dirname(out), exist_ok=True)
save_file(t, out)

back = load_file(out)
assert back.keys() == t.keys()
for k, v in t.items():
    assert np.array_equal(back[k], v, equal_nan=True), k
print(f"wrote {out}: {len(t)} tensors, {os.path.getsize(out)} bytes")
