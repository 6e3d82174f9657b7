#!/usr/bin/env python3
"""Writes the fuzz seeds that no other fixture provides into tests/fixtures/fuzz/seeds/ (committed;
rerun only to change them): a training sample with a mask and a reference, its metadata.jsonl, a
training state.json and the optimizer moments of the rank-2 to_q/to_k LoRA that
`wgdit::fuzzing::fixture_lora` builds for the tiny fixture model (2 blocks, D = 32, text width 24); and
two small tokenizers cut from the fixture Qwen2 tokenizer (the first 300 tokens, the merges among them,
the 22 added tokens renumbered after them): tokenizer.json, and vocab.json + merges.txt +
tokenizer_config.json joined by "\n\0\n" (tokenizer_slow.bin, as `wgdit::fuzzing::tokenizer_slow` splits it);
and a DiffSynth metadata.csv for `wgdit cache` (BOM, CRLF, quoted commas, quotes and line breaks, edit_image
as one path, a JSON list and a Python list, an empty cell)."""
import gzip, json, struct, pathlib

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/fuzz/seeds"


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> file bytes (offsets in name order)."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in sorted(tensors):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def f32(n, start=0.0):
    return struct.pack(f"<{n}f", *[start + 0.25 * i for i in range(n)])


def tokenizer_seeds():
    t = json.loads(gzip.open(OUT.parent.parent / "text/tokenizer/tokenizer.json.gz").read())
    vocab = {k: v for k, v in t["model"]["vocab"].items() if v < 300}
    pair = lambda m: m if isinstance(m, list) else m.split(" ")
    merges = [m for m in t["model"]["merges"] if all(x in vocab for x in pair(m)) and "".join(pair(m)) in vocab]
    t["model"]["vocab"], t["model"]["merges"] = vocab, merges
    for i, a in enumerate(t["added_tokens"]):
        a["id"] = 300 + i
    (OUT / "tokenizer.json").write_text(json.dumps(t, ensure_ascii=False))
    m = "#version: 0.2\n" + "".join(" ".join(pair(x)) + "\n" for x in merges)
    cfg = {"added_tokens_decoder": {str(a["id"]): {"content": a["content"], "special": a["special"]}
                                    for a in t["added_tokens"]}}
    sep = "\n\0\n"
    (OUT / "tokenizer_slow.bin").write_text(json.dumps(vocab, ensure_ascii=False) + sep + m + sep + json.dumps(cfg))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # tiny model: C = in_channels / patch^2 = 16 / 4 = 4; latents [4, 4, 6], reference [4, 2, 2]
    sample = safetensors([
        ("latents", "F32", [4, 4, 6], f32(96)),
        ("prompt_embeds", "BF16", [3, 24], b"\x80\x3f" * 72),
        ("prompt_mask", "BOOL", [3], b"\x01\x01\x00"),
        ("ref_latents.0", "F16", [4, 2, 2], b"\x00\x3c" * 16),
    ])
    (OUT / "train_sample.safetensors").write_bytes(sample)
    (OUT / "metadata.jsonl").write_text(
        '{"file": "sample000.safetensors", "caption": "a cat"}\n\n{"file": "b/sample001.safetensors", "w": 1}\n')
    targets = [f"transformer_blocks.{b}.attn.{m}" for b in range(2) for m in ("to_q", "to_k")]
    state = {"version": 1, "step": 3, "rng": {"state": 11400714819323198485, "spare": 0.5},
             "data": {"epoch": 1, "position": 1},
             "lora": {"rank": 2, "alpha": 2.0, "targets": ["to_q", "to_k"]},
             "hyper": {"lr": 0.0001, "seed": 0, "batch_size": 2, "schedule": "constant"}}
    (OUT / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    moments = []
    for p in targets:
        for part, shape in (("lora_A", [2, 32]), ("lora_B", [32, 2])):
            for kind in ("m", "v"):
                moments.append((f"{p}.{part}.{kind}", "F32", shape, f32(64)))
    (OUT / "optimizer.safetensors").write_bytes(safetensors(moments))
    keys = [f"{p}.lora_A.weight" for p in ("transformer.transformer_blocks.0.attn.to_q",
                                           "transformer.transformer_blocks.1.img_mlp.net.2")]
    keys += ["lora_unet_transformer_blocks_0_attn_to_k.lora_down.weight",
             "lora_unet_transformer_blocks_0_attn_to_k.alpha",
             "diffusion_model.transformer_blocks.1.attn.add_qkv_proj.lora_up.weight",
             "transformer_blocks.0.txt_mod.1.lora_B.default.weight", "img_in.alpha"]
    (OUT / "lora_keys.txt").write_text("\n".join(keys) + "\n")


def dataset_csv_seed():
    rows = [
        "\ufeffimage,prompt,edit_image",
        'target/1.jpg,"a cat, sitting",edit/1.jpg',
        'target/2.png,"two ""quoted""\nlines","[""edit/a.png"", ""edit/b.png""]"',
        "target/3.webp,plain,\"['edit/c.png', 'it\\'s.png']\"",
        "target/4.png,,",
        "",
    ]
    (OUT / "metadata.csv").write_bytes("\r\n".join(rows).encode())


if __name__ == "__main__":
    main()
    tokenizer_seeds()
    dataset_csv_seed()
