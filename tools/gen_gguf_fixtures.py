#!/usr/bin/env python3
"""Tiny GGUF files written by gguf-py, and what gguf-py reads back from them, for wgdit's GGUF reader.

Writes, from the repository root:
  tests/fixtures/gguf/tiny.gguf             architecture qwen_image, every GGML type wgdit reads (F32, F16,
                                            BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K) under Qwen-Image
                                            names, metadata of every value type (nested arrays too) and a
                                            `comfy.gguf.orig_shape.<name>` entry
  tests/fixtures/gguf/tiny.expected.json    gguf-py's GGUFReader on tiny.gguf: each tensor's name, type name,
                                            shape (ne reversed, or the orig_shape) and offset; each KV's
                                            type(s) and contents
  tests/fixtures/gguf/tiny.expected.safetensors  every tensor dequantized by gguf.quants.dequantize (float32,
                                            in wgdit's shape)
  tests/fixtures/gguf/aligned64.gguf        no architecture (sd.cpp-style), general.alignment 64; its
                                            .expected.json / .expected.safetensors likewise
  tests/fixtures/fuzz/gguf/*.gguf           fuzz seeds (< 4 KB each)

Q8_0..Q5_1 and BF16 are quantized by gguf.quants from seeded normal values. gguf-py has no k-quant
quantizer, so Q2_K..Q6_K tensors are random, well-formed blocks: random bytes with the f16 block scales set
to small positive values; gguf-py's dequantization gives their values.

  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_gguf_fixtures.py
"""
import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

OUT = Path("tests/fixtures/gguf")
SEEDS = Path("tests/fixtures/fuzz/gguf")
rng = np.random.default_rng(20250701)

# Byte offsets of the f16 super-block scales (d, dmin) inside each k-quant block (ggml-common.h).
K_SCALES = {Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def k_blocks(qtype, rows, cols):
    """Random well-formed k-quant blocks for a [rows, cols] tensor, as gguf-py's byte layout."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    for off in K_SCALES[qtype]:
        d = rng.uniform(0.002, 0.05, size=b.shape[0]).astype(np.float16)
        b[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    return b.reshape(rows, cols // block * size)


def tensor(w, expected, name, qtype, shape, orig_shape=None):
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    if qtype in K_SCALES:
        data = k_blocks(qtype, rows, cols).reshape(*shape[:-1], -1)
    else:
        x = rng.normal(0, 1, size=shape).astype(np.float32)
        data = gguf.quants.quantize(x, qtype)
    w.add_tensor(name, data, raw_dtype=qtype)
    if orig_shape is not None:
        w.add_array(f"comfy.gguf.orig_shape.{name}", list(orig_shape))
    values = gguf.quants.dequantize(data, qtype).astype(np.float32)
    expected[name] = np.ascontiguousarray(values.reshape(orig_shape if orig_shape else shape))


def write(path, build, arch="qwen_image"):
    w = gguf.GGUFWriter(str(path), arch)  # arch None: gguf-py writes no general.architecture
    expected = {}
    build(w, expected)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def tiny(w, e):
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32("general.file_type", 15)
    w.add_uint8("test.u8", 250)
    w.add_int8("test.i8", -7)
    w.add_uint16("test.u16", 65000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.375)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "Qwen-Image 千问 🐈")
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_str", ["a", "b\"c", ""])
    w.add_array("test.array_nested", [[1, 2], [3]])
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float64("test.f64", -2.5e-300)
    tensor(w, e, "img_in.weight", Q.F32, [8, 16])
    tensor(w, e, "img_in.bias", Q.F32, [8])
    tensor(w, e, "txt_in.weight", Q.F16, [8, 32])
    blk = "transformer_blocks.0."
    tensor(w, e, blk + "attn.to_q.weight", Q.Q8_0, [2, 64])
    tensor(w, e, blk + "attn.to_k.weight", Q.Q4_0, [2, 64])
    tensor(w, e, blk + "attn.to_v.weight", Q.Q4_1, [2, 64])
    tensor(w, e, blk + "attn.add_q_proj.weight", Q.Q5_0, [2, 64])
    tensor(w, e, blk + "attn.add_k_proj.weight", Q.Q5_1, [2, 64])
    tensor(w, e, blk + "attn.add_v_proj.weight", Q.BF16, [4, 32])
    tensor(w, e, blk + "img_mlp.net.0.proj.weight", Q.Q4_K, [2, 256])
    tensor(w, e, blk + "img_mlp.net.2.weight", Q.Q6_K, [1, 256])
    tensor(w, e, blk + "txt_mlp.net.0.proj.weight", Q.Q2_K, [1, 256])
    tensor(w, e, blk + "txt_mlp.net.2.weight", Q.Q3_K, [1, 256])
    tensor(w, e, blk + "txt_mod.1.weight", Q.Q5_K, [1, 256])
    # stored as rows of 256 (as city96's convert.py reshapes), read back as [8, 64]
    tensor(w, e, blk + "img_mod.1.weight", Q.Q4_K, [2, 256], orig_shape=[8, 64])


def aligned64(w, e):
    w.add_custom_alignment(64)
    tensor(w, e, "model.diffusion_model.img_in.bias", Q.F32, [3])
    tensor(w, e, "model.diffusion_model.transformer_blocks.0.attn.to_q.weight", Q.Q8_0, [3, 32])
    tensor(w, e, "model.diffusion_model.transformer_blocks.0.attn.to_k.weight", Q.F16, [5, 7])


def seed_k(w, e):
    w.add_array("test.array_nested", [[1, 2], [3]])
    w.add_string("test.string", "x")
    tensor(w, e, "transformer_blocks.0.attn.to_q.weight", Q.Q4_K, [1, 256])
    tensor(w, e, "transformer_blocks.0.attn.to_q.bias", Q.F32, [4])


def seed_mixed(w, e):
    w.add_custom_alignment(64)
    w.add_float64("test.f64", 1.5)
    tensor(w, e, "transformer_blocks.0.img_mod.1.weight", Q.Q8_0, [2, 32], orig_shape=[4, 16])
    tensor(w, e, "transformer_blocks.0.attn.to_k.weight", Q.Q5_1, [1, 64])
    tensor(w, e, "transformer_blocks.0.attn.to_v.weight", Q.BF16, [2, 3])
    tensor(w, e, "transformer_blocks.0.attn.to_v.bias", Q.F16, [2])


def seed_small_k(w, e):
    tensor(w, e, "img_mlp.a.weight", Q.Q2_K, [1, 256])
    tensor(w, e, "img_mlp.b.weight", Q.Q3_K, [1, 256])
    tensor(w, e, "img_mlp.c.weight", Q.Q6_K, [1, 256])


def field_json(f):
    types = [t.name for t in f.types]
    return {"types": types, "contents": f.contents()}


def describe(path):
    """What gguf-py's GGUFReader reads from a file, in wgdit's terms."""
    r = gguf.GGUFReader(str(path))
    kvs = {k: field_json(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    orig = {k[len("comfy.gguf.orig_shape."):]: v["contents"] for k, v in kvs.items()
            if k.startswith("comfy.gguf.orig_shape.")}
    tensors = [{
        "name": t.name,
        "type": t.tensor_type.name,
        "shape": orig.get(t.name, [int(d) for d in reversed(t.shape.tolist())]),
        "offset": int(t.data_offset - r.data_offset),
        "n_bytes": int(t.n_bytes),
    } for t in r.tensors]
    return {"alignment": int(r.alignment), "data_offset": int(r.data_offset), "kvs": kvs, "tensors": tensors}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    SEEDS.mkdir(parents=True, exist_ok=True)
    for name, build, arch in [("tiny", tiny, "qwen_image"), ("aligned64", aligned64, None)]:
        path = OUT / f"{name}.gguf"
        expected = write(path, build, arch)
        desc = describe(path)
        assert [t["name"] for t in desc["tensors"]] == list(expected), "tensor order"
        (OUT / f"{name}.expected.json").write_text(json.dumps(desc, indent=1, ensure_ascii=False) + "\n")
        save_file(expected, str(OUT / f"{name}.expected.safetensors"))
    for name, build, arch in [("q4k", seed_k, "qwen_image"), ("mixed", seed_mixed, None),
                              ("small_k", seed_small_k, "qwen_image")]:
        path = SEEDS / f"{name}.gguf"
        write(path, build, arch)
        describe(path)
        assert path.stat().st_size < 4096, f"{path}: a seed should be < 4 KB"
    total = sum(p.stat().st_size for p in OUT.iterdir())
    assert total < 50_000, f"tests/fixtures/gguf is {total} bytes; keep it < 50 KB"
    for p in sorted(list(OUT.iterdir()) + list(SEEDS.iterdir())):
        print(f"{p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
