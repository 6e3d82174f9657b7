"""Writes tests/fixtures/quant/blocks.safetensors: GGML block formats from ggml's C and gguf-py, fp8 from torch.

Run: LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_quant_fixtures.py --ggml DIR

DIR is a checkout of https://github.com/ggml-org/ggml (or llama.cpp's ggml/ folder; made with ggml commit
d99724f2b141fed9e1a9f402213506c081433465). The script compiles DIR/src/ggml-quants.c with a small harness
(gcc -O3 -ffp-contract=off, as ggml-base is built on x86-64: no arch flags, so no fused multiply-adds) and
calls its `quantize_row_*_ref` / `dequantize_row_*`. gguf-py 0.19.0 (`gguf.quants`) ports ggml's reference C
for decoding and the legacy quantizers, and torch 2.15 gives the fp8 casts. Tensors, for each of the ten
GGML block types T in q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k:
- `T.bytes` U8 [blocks, block_bytes]: valid blocks. Legacy types: gguf-py's quantization of `T.src`, then
  blocks of random quant bytes with random finite f16 scales (and mins). K-quants: random bytes whose f16
  d / dmin fields are overwritten by random finite halves (normal, subnormal, zero, negative).
- `T.values` F32 [blocks, block_elems]: `gguf.quants.dequantize(T.bytes)`.
- legacy types: `T.src` F32 [blocks, 32] (seeded normals at several scales and hand-made tie cases) and
  `T.quantized` U8: `gguf.quants.quantize(T.src)`, which the script checks equals ggml's `quantize_row_T_ref`.
- k-quants: `T.quantized` U8: ggml's `quantize_row_T_ref` of `kquant.src` F32 [blocks, 256] (normals at
  several scales, heavy tails, uniform, all positive, all negative, sparse, zeros, constants, outliers).
  gguf-py has no k-quant quantizer; this is what `llama-quantize` writes without an importance matrix.
The script also checks that ggml's `dequantize_row_T` of every `T.bytes` equals gguf-py's `T.values` bit for bit.
and for the fp8 formats F in f8_e4m3 f8_e5m2:
- `F.table` F32 [256]: torch's value of every code (`torch.arange(256, dtype=uint8).view(float8)`).
- `F.src` F32 [n]: every midpoint between neighbouring finite values, those nudged one f32 ulp either
  way, random normals at several scales, overflow, infinities and NaN; `F.encoded` U8 [n]: the cast of
  `F.src` as ComfyUI makes it, `src.clamp(-max, max).to(float8)` (round to nearest even, saturating).
"""
import argparse
import os
import shutil
import subprocess
import tempfile

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file, save_file

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml-quants.h"
// ggml-quants.c refers to these ggml.c functions on paths the harness never takes.
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "ggml_abort %s:%d %s\n", file, line, fmt); abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type; (void)ne; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void)type; abort(); }
const char * ggml_type_name(enum ggml_type type) { (void)type; return "?"; }

typedef void (*quantize_fn)(const float *, void *, int64_t);
typedef void (*dequantize_fn)(const void *, float *, int64_t);
#define T(name, elems) { #name, (quantize_fn)quantize_row_##name##_ref, (dequantize_fn)dequantize_row_##name, sizeof(block_##name), elems }
static const struct { const char * name; quantize_fn q; dequantize_fn d; size_t bytes; int elems; } TYPES[] = {
    T(q8_0, 32), T(q4_0, 32), T(q4_1, 32), T(q5_0, 32), T(q5_1, 32),
    T(q2_K, 256), T(q3_K, 256), T(q4_K, 256), T(q5_K, 256), T(q6_K, 256),
};

// harness TYPE q|d BLOCKS IN OUT: quantize BLOCKS blocks of f32 from IN, or dequantize BLOCKS blocks.
int main(int argc, char ** argv) {
    if (argc != 6) return 2;
    long nb = atol(argv[3]);
    for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; ++t) {
        if (strcmp(TYPES[t].name, argv[1]) != 0) continue;
        size_t nf = (size_t)nb * TYPES[t].elems * 4, nq = (size_t)nb * TYPES[t].bytes;
        int quantize = argv[2][0] == 'q';
        char * in = malloc(quantize ? nf : nq), * out = malloc(quantize ? nq : nf);
        FILE * f = fopen(argv[4], "rb");
        if (!f || fread(in, 1, quantize ? nf : nq, f) != (quantize ? nf : nq)) return 3;
        fclose(f);
        if (quantize) TYPES[t].q((const float *)in, out, nb * TYPES[t].elems);
        else TYPES[t].d(in, (float *)out, nb * TYPES[t].elems);
        f = fopen(argv[5], "wb");
        fwrite(out, 1, quantize ? nq : nf, f);
        fclose(f);
        return 0;
    }
    return 4;
}
"""


class Ggml:
    """ggml's ggml-quants.c, compiled into a harness once."""

    def __init__(self, ggml_dir):
        src = os.path.join(ggml_dir, "src")
        if not os.path.exists(os.path.join(src, "ggml-quants.c")):
            raise SystemExit(f"{src}/ggml-quants.c not found: pass --ggml a ggml checkout (or llama.cpp/ggml)")
        self.tmp = tempfile.mkdtemp(prefix="ggml-quants-")
        self.exe = os.path.join(self.tmp, "harness")
        harness = os.path.join(self.tmp, "harness.c")
        with open(harness, "w") as f:
            f.write(HARNESS)
        flags = ["-O3", "-DNDEBUG", "-ffp-contract=off", "-I", os.path.join(ggml_dir, "include"), "-I", src]
        subprocess.run(["gcc", *flags, "-o", self.exe, harness, os.path.join(src, "ggml-quants.c"), "-lm"], check=True)

    def run(self, name, mode, data, nb, out_dtype):
        cname = name.replace("_k", "_K")
        i, o = os.path.join(self.tmp, "in.bin"), os.path.join(self.tmp, "out.bin")
        np.ascontiguousarray(data).tofile(i)
        subprocess.run([self.exe, cname, mode, str(nb), i, o], check=True)
        return np.fromfile(o, dtype=out_dtype).reshape(nb, -1)

    def quantize(self, name, src):
        return self.run(name, "q", src.astype(np.float32), src.size // src.shape[-1], np.uint8)

    def dequantize(self, name, blocks):
        return self.run(name, "d", blocks, blocks.shape[0], np.float32)


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--ggml", required=True, help="a ggml checkout (github.com/ggml-org/ggml) or llama.cpp/ggml")
ggml = Ggml(parser.parse_args().ggml)

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


def kquant_src():
    """Ten 256-element super-blocks of varied data for the k-quant quantizers."""
    n = 256
    normal = [rng.standard_normal(n) * s for s in (1e-4, 0.02, 1.0, 50.0)]
    sparse = rng.standard_normal(n) * (rng.random(n) < 0.1)
    outliers = rng.standard_normal(n) * 0.02
    outliers[::37] = 1.5
    blocks = normal + [
        rng.standard_t(2, n) * 0.02,  # heavy tails
        np.abs(rng.standard_normal(n)) + 0.5,  # all positive
        -np.abs(rng.standard_normal(n)) * 0.1,  # all negative
        sparse,
        np.concatenate([np.zeros(128), np.full(128, 0.3)]),  # a zero half and a constant half
        outliers,
    ]
    return np.stack(blocks).astype(np.float32)


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
    assert np.array_equal(quantized, ggml.quantize(name, src)), f"{name}: gguf-py and ggml quantize differently"
    raw = random_legacy_blocks(name, qtype, 8)
    blocks = np.concatenate([quantized, raw])
    t[f"{name}.src"] = src
    t[f"{name}.quantized"] = quantized
    t[f"{name}.bytes"] = blocks
    t[f"{name}.values"] = gguf.quants.dequantize(blocks, qtype)

t["kquant.src"] = kquant_src()
for name, (qtype, nbytes, offsets) in KQUANT.items():
    blocks = random_kquant_blocks(nbytes, offsets, 6)
    t[f"{name}.bytes"] = blocks
    t[f"{name}.values"] = gguf.quants.dequantize(blocks, qtype)
    t[f"{name}.quantized"] = ggml.quantize(name, t["kquant.src"])

for name in [*LEGACY, *KQUANT]:
    c = ggml.dequantize(name, t[f"{name}.bytes"])
    assert np.array_equal(c.view(np.uint32), t[f"{name}.values"].view(np.uint32)), f"{name}: gguf-py and ggml decode differently"

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
shutil.rmtree(ggml.tmp)
print(f"wrote {out}: {len(t)} tensors, {os.path.getsize(out)} bytes")
