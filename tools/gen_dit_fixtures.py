#!/usr/bin/env python3
"""Reference fixtures for the Qwen-Image DiT (forward parity, weight formats, LoRA formats, LoRA gradients).

Everything is computed in float32 on the CPU by diffusers 0.42.1's own `QwenImageTransformer2DModel` (and peft
0.21.2 for LoRA); nothing here reimplements the model. The weights are random (fixed seeds), so the run is
deterministic: running it twice gives byte-identical files.

Writes, under OUT (default tests/fixtures; see tests/fixtures/README.md for every tensor):
  dit/tiny/                      config.json + diffusion_pytorch_model.safetensors (save_pretrained, f32)
  dit/tiny-sharded/              the same weights in 3 shards + diffusion_pytorch_model.safetensors.index.json
  dit/tiny-bf16/                 the same weights stored as bf16
  dit/tiny-comfy.safetensors     f32, every key prefixed `model.diffusion_model.`
  dit/tiny-merged.safetensors    f32, q/k/v merged into attn.to_qkv and attn.add_qkv_proj
  dit/tiny-2511/config.json      the tiny config with zero_cond_t = true (weights: dit/tiny)
  dit/cases/<case>.inputs.safetensors / <case>.expected.safetensors   model inputs and outputs + per-block hooks
  lora/{peft,diffsynth,kohya,comfy,peft-merged-qkv}.safetensors       one rank-4 LoRA in several key formats
  lora/cases/<fmt>.expected.safetensors, peft_scale0.5.expected.safetensors, grad_peft*.safetensors

Run from the repository root (the reference env comes from /work/shared/tools/refenv.sh):
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_dit_fixtures.py [--out tests/fixtures]
Every written case is reloaded from disk and recomputed at the end (self-check); the script fails if anything
differs. It deletes and rewrites OUT/dit and OUT/lora (nothing else). Takes about 30 s on one core.
"""
import argparse
import copy
import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
from diffusers.models.normalization import RMSNorm
from diffusers.utils import logging as diffusers_logging
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# diffusers unit-test shapes (spec 1.2) with 2 heads (D = 32) and joint_attention_dim 24 (≠ D, ≠ in_channels).
TINY = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=[8, 4, 4], guidance_embeds=False)
D = 32
# Legacy key present in the real transformer/config.json; diffusers warns and ignores it on load.
POOLED_PROJECTION_DIM = 768

WEIGHT_SEED = 20250601
LORA_SEED = 20250602
LORA_TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
                "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1"]  # DiffSynth-Studio's list (spec 7.1)
LORA_RANK, LORA_ALPHA = 4, 8  # scale alpha/r = 2, deliberately ≠ 1
LORA_STD = 0.3


def linear_gain(module_name):
    """Std multiplier c in W ~ N(0, c²/fan_in). Chosen (by measuring every intermediate) so both streams stay
    around rms 1-2, modulation shift/scale/gate have rms 0.5-0.7, and text, RoPE, mask and references visibly move
    the output (check_every_path_matters prints by how much); with c = 1 everywhere the gates were ≈0.2 and new
    text changed the output by only ≈8%."""
    if module_name.endswith(("img_mod.1", "txt_mod.1")) or module_name == "norm_out.linear":
        return 1.5
    if module_name.endswith(("to_out.0", "to_add_out", "timestep_embedder.linear_2")):
        return 2.0
    return 1.0


def randomise(model, seed):
    """Re-draw every parameter: Linear W ~ N(0, c²/fan_in), b ~ N(0, 0.1²); RMSNorm weight ~ 1 + 0.2·N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            module_name, kind = name.rsplit(".", 1)
            module = modules[module_name]
            if isinstance(module, nn.Linear) and kind == "weight":
                p.copy_(torch.randn(p.shape, generator=g) * linear_gain(module_name) / math.sqrt(p.shape[1]))
            elif isinstance(module, nn.Linear) and kind == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif isinstance(module, RMSNorm) and kind == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"no init rule for parameter {name}")


def new_tiny(zero_cond_t=False):
    model = QwenImageTransformer2DModel(**TINY, zero_cond_t=zero_cond_t)
    model.register_to_config(pooled_projection_dim=POOLED_PROJECTION_DIM)
    return model.eval()


def tiny_from(state_dict, zero_cond_t=False):
    model = new_tiny(zero_cond_t)
    model.load_state_dict(state_dict, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------- models

def merge_qkv(state_dict):
    """Merged-QKV layout: attn.to_qkv = cat(to_q, to_k, to_v) and attn.add_qkv_proj = cat(add_q/k/v_proj), dim 0."""
    out = dict(state_dict)
    for i in range(TINY["num_layers"]):
        a = f"transformer_blocks.{i}.attn."
        for merged, parts in (("to_qkv", ("to_q", "to_k", "to_v")),
                              ("add_qkv_proj", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for kind in ("weight", "bias"):
                out[f"{a}{merged}.{kind}"] = torch.cat([out.pop(f"{a}{p}.{kind}") for p in parts], 0)
    return out


def split_qkv(state_dict):
    """Inverse of merge_qkv (used only by the self-check)."""
    out = dict(state_dict)
    for i in range(TINY["num_layers"]):
        a = f"transformer_blocks.{i}.attn."
        for merged, parts in (("to_qkv", ("to_q", "to_k", "to_v")),
                              ("add_qkv_proj", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for kind in ("weight", "bias"):
                for p, t in zip(parts, out.pop(f"{a}{merged}.{kind}").chunk(3, 0)):
                    out[f"{a}{p}.{kind}"] = t.contiguous()
    return out


def bf16_rounded(model):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return m


def write_models(model, dit):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    model.save_pretrained(dit / "tiny", safe_serialization=True)
    model.save_pretrained(dit / "tiny-sharded", safe_serialization=True, max_shard_size="150KB")
    shards = sorted((dit / "tiny-sharded").glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) >= 3, f"expected >= 3 shards, got {[s.name for s in shards]}"
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(dit / "tiny-bf16", safe_serialization=True)
    save_file({f"model.diffusion_model.{k}": v for k, v in sd.items()}, dit / "tiny-comfy.safetensors",
              metadata={"format": "pt"})
    save_file(merge_qkv(sd), dit / "tiny-merged.safetensors", metadata={"format": "pt"})
    new_tiny(zero_cond_t=True).save_config(dit / "tiny-2511")


def owned(model):
    """Move every parameter into freshly allocated memory. from_pretrained leaves tensors that are not 64-byte
    aligned (they view the mmapped file), and torch's CPU matmul then takes another kernel path whose rounding
    differs by ~1e-6; the expected files are computed with aligned tensors, and the self-check demands equality."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model


def load_model(dit, name):
    """Load model `name` (the inputs' "model" metadata) back from disk, as an f32 diffusers model."""
    if name in ("tiny", "tiny-sharded", "tiny-bf16"):
        return owned(QwenImageTransformer2DModel.from_pretrained(dit / name, torch_dtype=torch.float32).eval())
    if name == "tiny-2511":
        config = QwenImageTransformer2DModel.load_config(dit / name)
        model = QwenImageTransformer2DModel.from_config(config).eval()
        assert model.config.zero_cond_t
        model.load_state_dict(load_file(dit / "tiny" / "diffusion_pytorch_model.safetensors"), strict=True)
        return model
    if name == "tiny-comfy":
        sd = load_file(dit / "tiny-comfy.safetensors")
        assert all(k.startswith("model.diffusion_model.") for k in sd)
        return tiny_from({k.removeprefix("model.diffusion_model."): v for k, v in sd.items()})
    if name == "tiny-merged":
        return tiny_from(split_qkv(load_file(dit / "tiny-merged.safetensors")))
    raise KeyError(name)


# ----------------------------------------------------------------------------------------------------- cases

# name: (model, seed, B, img_shapes, S_txt, timestep, mask (None | (dtype, rows)))
CASES = {
    "odd_grid": ("tiny", 101, 1, [(1, 3, 5)], 7, [0.7], None),
    "batch_mask": ("tiny", 102, 2, [(1, 4, 6)], 7, [0.5, 0.9],
                   (torch.int64, [[1] * 7, [1, 0, 1, 0, 1, 1, 0]])),
    "batch_mask_f32": ("tiny-bf16", 103, 2, [(1, 4, 6)], 7, [0.5, 0.9],
                       (torch.float32, [[1] * 7, [1, 1, 1, 1, 1, 0, 0]])),
    "edit_ref": ("tiny", 104, 1, [(1, 4, 4), (1, 3, 5)], 6, [0.4], None),
    "zero_cond_t": ("tiny-2511", 105, 1, [(1, 3, 4), (1, 2, 3), (1, 4, 2)], 5, [0.6], None),
    "sharded": ("tiny-sharded", 106, 1, [(1, 5, 3)], 7, [0.3], None),
    "comfy": ("tiny-comfy", 107, 1, [(1, 3, 5)], 7, [0.55], None),
    "merged": ("tiny-merged", 108, 1, [(1, 5, 5)], 7, [0.85], None),
}


def make_inputs(seed, batch, img_shapes, s_txt, timestep, mask):
    g = torch.Generator().manual_seed(seed)
    s_img = sum(f * h * w for f, h, w in img_shapes)
    inputs = {
        "hidden_states": torch.randn(batch, s_img, TINY["in_channels"], generator=g),
        "encoder_hidden_states": torch.randn(batch, s_txt, TINY["joint_attention_dim"], generator=g),
        "timestep": torch.tensor(timestep, dtype=torch.float32),
        "img_shapes": torch.tensor(img_shapes, dtype=torch.int64),
    }
    if mask is not None:
        dtype, rows = mask
        inputs["encoder_hidden_states_mask"] = torch.tensor(rows, dtype=dtype)
    return inputs


def forward(model, inputs):
    """diffusers forward on a CLI-contract inputs dict; img_shapes is shared by the batch."""
    batch = inputs["hidden_states"].shape[0]
    shapes = [tuple(int(v) for v in row) for row in inputs["img_shapes"].tolist()]
    return model(hidden_states=inputs["hidden_states"], encoder_hidden_states=inputs["encoder_hidden_states"],
                 encoder_hidden_states_mask=inputs.get("encoder_hidden_states_mask"), timestep=inputs["timestep"],
                 img_shapes=[shapes] * batch, return_dict=True).sample


def forward_captured(model, inputs):
    """Full output plus forward-hook captures of img_in, txt_in, temb and every block's (text, image)."""
    caps, hooks = {}, []

    def keep(name):
        return lambda _m, _i, out: caps.__setitem__(name, out.detach().clone())

    def keep_block(i):
        def hook(_m, _i, out):
            caps[f"block.{i}.txt"], caps[f"block.{i}.img"] = (t.detach().clone() for t in out)
        return hook

    hooks.append(model.img_in.register_forward_hook(keep("img_in")))
    hooks.append(model.txt_in.register_forward_hook(keep("txt_in")))
    hooks.append(model.time_text_embed.register_forward_hook(keep("temb")))
    for i, block in enumerate(model.transformer_blocks):
        hooks.append(block.register_forward_hook(keep_block(i)))
    try:
        with torch.no_grad():
            caps["output"] = forward(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return caps


def write_cases(models, cases_dir):
    for case, (model_name, seed, batch, img_shapes, s_txt, timestep, mask) in CASES.items():
        inputs = make_inputs(seed, batch, img_shapes, s_txt, timestep, mask)
        expected = forward_captured(models[model_name], inputs)
        s_img = inputs["hidden_states"].shape[1]
        assert expected["output"].shape == (batch, s_img, 16)
        assert expected["temb"].shape[0] == (2 * batch if model_name == "tiny-2511" else batch)
        meta = {"model": model_name, "case": case}
        save_file(inputs, cases_dir / f"{case}.inputs.safetensors", metadata=meta)
        save_file(expected, cases_dir / f"{case}.expected.safetensors", metadata=meta)
        rms = expected["output"].pow(2).mean().sqrt().item()
        print(f"case {case:15s} model {model_name:12s} output {tuple(expected['output'].shape)} rms {rms:.3f}")


def check_every_path_matters(models):
    """The random weights must make each input visibly move the output (relative L2 change, asserted > 3%)."""
    def change(inputs, other_inputs, model="tiny", other_model="tiny", tokens=slice(None)):
        with torch.no_grad():
            a = forward(models[model], inputs)[:, tokens]
            b = forward(models[other_model], other_inputs)[:, tokens]
        return rel_err(b, a)

    g = torch.Generator().manual_seed(7)
    odd, edit, masked, zero = (make_inputs(*CASES[c][1:])
                               for c in ("odd_grid", "edit_ref", "batch_mask", "zero_cond_t"))
    new_refs = edit["hidden_states"].clone()
    new_refs[:, 16:] = torch.randn(new_refs[:, 16:].shape, generator=g)
    checks = {
        "text": change(odd, {**odd, "encoder_hidden_states": torch.randn(1, 7, 24, generator=g)}),
        "timestep": change(odd, {**odd, "timestep": torch.tensor([0.2])}),
        "rope (3x5 -> 5x3)": change(odd, {**odd, "img_shapes": torch.tensor([[1, 5, 3]])}),
        "mask": change(masked, {**masked, "encoder_hidden_states_mask": torch.ones(2, 7, dtype=torch.int64)}),
        "reference tokens -> target": change(edit, {**edit, "hidden_states": new_refs}, tokens=slice(0, 16)),
        "zero_cond_t": change(zero, zero, model="tiny-2511"),
        "bf16 rounding of weights": change(masked, masked, model="tiny-bf16"),
    }
    for name, value in checks.items():
        print(f"sanity: output change from {name:28s} {value:.3g}")
    assert all(v > 0.03 for k, v in checks.items() if not k.startswith("bf16")), checks
    assert checks["bf16 rounding of weights"] > 1e-4


# ------------------------------------------------------------------------------------------------------ LoRA

def lora_peft_model(base_sd):
    """The tiny model with a peft LoRA injected through diffusers (add_adapter), A and B both random."""
    model = tiny_from(base_sd)
    model.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS,
                                 lora_dropout=0.0, init_lora_weights=True))
    g = torch.Generator().manual_seed(LORA_SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * LORA_STD)
    return model


def adapter_metadata(model, target_modules=None):
    """peft config as diffusers' training scripts save it (_collate_lora_metadata), with sets as sorted lists:
    the saver would turn a set into list(set), whose order depends on PYTHONHASHSEED."""
    meta = model.peft_config["default"].to_dict()
    if target_modules is not None:
        meta["target_modules"] = target_modules
    return {k: sorted(v) if isinstance(v, set) else v for k, v in meta.items()}


def lora_pairs(peft_sd):
    """{module path: (A [r, in], B [out, r])} from get_peft_model_state_dict keys."""
    paths = sorted(k.removesuffix(".lora_A.weight") for k in peft_sd if k.endswith(".lora_A.weight"))
    return {p: (peft_sd[f"{p}.lora_A.weight"], peft_sd[f"{p}.lora_B.weight"]) for p in paths}


def other_formats(pairs):
    scale = LORA_ALPHA / LORA_RANK
    alpha = torch.tensor(float(LORA_ALPHA), dtype=torch.float32)  # 0-dim, as kohya writes it
    diffsynth, kohya, comfy = {}, {}, {}
    for p, (a, b) in pairs.items():
        diffsynth[f"{p}.lora_A.default.weight"] = a.clone()
        diffsynth[f"{p}.lora_B.default.weight"] = (b * scale).contiguous()  # no alpha -> scale 1: fold it in
        k = "lora_unet_" + p.replace(".", "_")
        kohya.update({f"{k}.lora_down.weight": a.clone(), f"{k}.lora_up.weight": b.clone(),
                      f"{k}.alpha": alpha.clone()})
        c = f"diffusion_model.{p}"
        comfy.update({f"{c}.lora_A.weight": a.clone(), f"{c}.lora_B.weight": b.clone(), f"{c}.alpha": alpha.clone()})
    return {"diffsynth": diffsynth, "kohya": kohya, "comfy": comfy}


def merged_qkv_lora(pairs):
    """Rank-4 LoRA for a merged-QKV model: one (A, B [3D, r]) per attn.to_qkv / attn.add_qkv_proj, plus the same
    non-QKV tensors as peft.safetensors. Returns it and the exactly equivalent split LoRA (A shared by q, k, v;
    B split by rows), which diffusers can load."""
    g = torch.Generator().manual_seed(LORA_SEED + 1)
    merged, split = {}, {}
    for p, (a, b) in pairs.items():
        if not p.endswith(("to_q", "to_k", "to_v", "_proj")):
            merged[p], split[p] = (a, b), (a, b)
    for i in range(TINY["num_layers"]):
        at = f"transformer_blocks.{i}.attn."
        for name, parts in (("to_qkv", ("to_q", "to_k", "to_v")),
                            ("add_qkv_proj", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            a = torch.randn(LORA_RANK, D, generator=g) * LORA_STD
            b = torch.randn(3 * D, LORA_RANK, generator=g) * LORA_STD
            merged[at + name] = (a, b)
            for part, bp in zip(parts, b.chunk(3, 0)):
                split[at + part] = (a.clone(), bp.contiguous())
    flat = lambda d: {f"{p}.lora_{x}.weight": t for p, ab in sorted(d.items()) for x, t in zip("AB", ab)}
    return flat(merged), flat(split)


def load_lora_with_diffusers(base_sd, lora_dir, weight_name=None, state_dict=None, adapter="lora"):
    """A fresh tiny model with a LoRA file loaded by diffusers' own loader (format conversion included)."""
    model = tiny_from(base_sd)
    if state_dict is None:
        state_dict, metadata = QwenImagePipeline.lora_state_dict(lora_dir, weight_name=weight_name,
                                                                 return_lora_metadata=True)
    else:
        metadata = None
    QwenImagePipeline.load_lora_into_transformer(state_dict, transformer=model, adapter_name=adapter,
                                                 metadata=metadata)
    return model.eval()


def rel_err(got, want):
    return ((got - want).norm() / want.norm()).item()


def write_lora(base_sd, out, batch_inputs):
    lora_dir, cases = out / "lora", out / "lora" / "cases"
    peft_model = lora_peft_model(base_sd)
    peft_sd = get_peft_model_state_dict(peft_model)
    QwenImagePipeline.save_lora_weights(lora_dir, transformer_lora_layers=peft_sd, weight_name="peft.safetensors",
                                        transformer_lora_adapter_metadata=adapter_metadata(peft_model))
    pairs = lora_pairs(peft_sd)
    for fmt, sd in other_formats(pairs).items():
        save_file(sd, lora_dir / f"{fmt}.safetensors", metadata={"format": "pt"})
    merged, split = merged_qkv_lora(pairs)
    merged_targets = sorted(set(LORA_TARGETS) - {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}
                            | {"to_qkv", "add_qkv_proj"})
    QwenImagePipeline.save_lora_weights(lora_dir, transformer_lora_layers=merged,
                                        weight_name="peft-merged-qkv.safetensors",
                                        transformer_lora_adapter_metadata=adapter_metadata(peft_model, merged_targets))

    with torch.no_grad():
        want = forward(peft_model, batch_inputs)
        base = forward(tiny_from(base_sd), batch_inputs)
        by_hand = forward(fused(base_sd, peft_sd, LORA_ALPHA / LORA_RANK), batch_inputs)
    print(f"lora: output rms {want.pow(2).mean().sqrt():.3f}, |peft - base| / |base| = {rel_err(want, base):.3f}, "
          f"|peft - fused by hand| / |peft| = {rel_err(want, by_hand):.2e}")
    assert rel_err(want, by_hand) < 1e-5
    meta = {"model": "tiny", "inputs": "dit/cases/batch_mask.inputs.safetensors", "strength": "1.0"}
    for fmt in ("peft", "diffsynth", "kohya", "comfy"):
        with torch.no_grad():
            got = forward(load_lora_with_diffusers(base_sd, lora_dir, f"{fmt}.safetensors"), batch_inputs)
        err = rel_err(got, want)
        print(f"lora: diffusers loads {fmt:9s} rel err vs peft model {err:.2e}")
        assert err < 1e-6, fmt
        save_file({"output": got}, cases / f"{fmt}.expected.safetensors",
                  metadata={**meta, "lora": f"{fmt}.safetensors"})
    write_lora_half(base_sd, lora_dir, cases, batch_inputs, meta, pairs)
    write_lora_merged(base_sd, lora_dir, cases, batch_inputs, meta, split)
    return peft_model


def write_lora_half(base_sd, lora_dir, cases, batch_inputs, meta, pairs):
    """Adapter weight 0.5 via set_adapters; cross-checked against B·(alpha/r)·0.5 loaded at scale 1."""
    model = load_lora_with_diffusers(base_sd, lora_dir, "peft.safetensors")
    model.set_adapters(["lora"], weights=[0.5])
    folded = {f"transformer.{p}.lora_{x}.weight": t for p, (a, b) in pairs.items()
              for x, t in (("A", a), ("B", b * (0.5 * LORA_ALPHA / LORA_RANK)))}
    with torch.no_grad():
        got = forward(model, batch_inputs)
        ref = forward(load_lora_with_diffusers(base_sd, None, state_dict=folded), batch_inputs)
    print(f"lora: set_adapters(weight 0.5) rel err vs folded B/2 {rel_err(got, ref):.2e}")
    assert rel_err(got, ref) < 1e-6
    save_file({"output": got}, cases / "peft_scale0.5.expected.safetensors",
              metadata={**meta, "lora": "peft.safetensors", "strength": "0.5"})


def write_lora_merged(base_sd, lora_dir, cases, batch_inputs, meta, split):
    """Expected output of peft-merged-qkv.safetensors = the split-equivalent LoRA loaded by diffusers (with the
    header metadata of peft.safetensors: same r and alpha, split target names)."""
    sd = {f"transformer.{k}": v for k, v in split.items()}
    _, metadata = QwenImagePipeline.lora_state_dict(lora_dir, weight_name="peft.safetensors",
                                                    return_lora_metadata=True)
    model = tiny_from(base_sd)
    QwenImagePipeline.load_lora_into_transformer(sd, transformer=model, adapter_name="lora", metadata=metadata)
    merged = load_file(lora_dir / "peft-merged-qkv.safetensors")
    with torch.no_grad():
        got = forward(model.eval(), batch_inputs)
        ref = forward(fused(base_sd, merged, LORA_ALPHA / LORA_RANK, merged_layout=True), batch_inputs)
    print(f"lora: merged-qkv (split, diffusers) rel err vs W_qkv + 2·B·A fused by hand {rel_err(got, ref):.2e}")
    assert rel_err(got, ref) < 1e-5
    save_file({"output": got}, cases / "peft-merged-qkv.expected.safetensors",
              metadata={**meta, "lora": "peft-merged-qkv.safetensors"})


def fused(base_sd, lora_sd, scale, merged_layout=False):
    """Independent check of the LoRA semantics: a plain model with W + scale·B·A folded in by hand."""
    sd = merge_qkv(base_sd) if merged_layout else dict(base_sd)
    for key, a in lora_sd.items():
        if key.endswith(".lora_A.weight"):
            path = key.removesuffix(".lora_A.weight")
            b = lora_sd[f"{path}.lora_B.weight"]
            w = f"{path.removeprefix('transformer.')}.weight"
            sd[w] = sd[w] + scale * (b @ a)
    return tiny_from(split_qkv(sd) if merged_layout else sd)


def lora_grads(model, inputs, dy):
    """d(sum(output·dy)) / d(every LoRA tensor), keyed like peft.safetensors (`transformer.P.lora_A.weight`).
    A LoRA whose output never reaches the loss gets an all-zero gradient: in the last block the text stream's
    output is discarded, so its attn.add_q_proj, attn.to_add_out and txt_mlp.net.2 LoRAs are dead."""
    model.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    with torch.enable_grad():
        output = forward(model, inputs)
        (output * dy).sum().backward()
    grads = {}
    for name, p in sorted(model.named_parameters()):
        if ".lora_" in name:
            adapter = name.split(".")[-2]
            key = "transformer." + name.replace(f".{adapter}.weight", ".weight")
            grads[f"grad.{key}"] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
    return output.detach(), grads


GRAD_CASES = (("edit_ref", "grad_peft.safetensors", 301), ("batch_mask", "grad_peft_batch_mask.safetensors", 302))


def write_grads(peft_model, cases_dir, lora_cases):
    for case, fname, seed in GRAD_CASES:
        inputs = load_file(cases_dir / f"{case}.inputs.safetensors")
        g = torch.Generator().manual_seed(seed)
        dy = torch.randn(inputs["hidden_states"].shape[:2] + (16,), generator=g)
        output, grads = lora_grads(peft_model, inputs, dy)
        assert len(grads) == 2 * len(LORA_TARGETS) * TINY["num_layers"]
        zero = [k for k, v in grads.items() if not v.abs().max() > 0]
        print(f"grads {case}: {len(grads)} tensors, all-zero: {zero}")
        save_file({"dy": dy, "output": output, **grads}, lora_cases / fname,
                  metadata={"model": "tiny", "lora": "peft.safetensors", "strength": "1.0",
                            "inputs": f"dit/cases/{case}.inputs.safetensors",
                            "loss": "sum(output * dy) over the full output, all image tokens"})


# ------------------------------------------------------------------------------------------------ self-check

def canonicalise_header(path):
    """Sort the `__metadata__` keys of a safetensors header in place. The safetensors writer keeps the metadata in
    a hash map, so its key order (and the file's bytes) change from run to run; the tensor entries are already in
    a fixed order. Same length, so the data offsets are untouched."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    text = raw[8:8 + n].decode("utf-8")
    header = json.loads(text)
    dump = lambda h: json.dumps(h, separators=(",", ":"), ensure_ascii=False)
    assert dump(header) == text.rstrip(" "), f"{path}: unexpected header formatting"
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = dump(header).encode("utf-8")
    raw[8:8 + n] = new + b" " * (n - len(new))
    path.write_bytes(bytes(raw))


def check_lora_extras(base_sd, lora_dir, inputs):
    """Strength 0.5 reloaded; merged-QKV LoRA re-derived independently (folded into W_qkv by hand)."""
    model = load_lora_with_diffusers(base_sd, lora_dir, "peft.safetensors")
    model.set_adapters(["lora"], weights=[0.5])
    merged = load_file(lora_dir / "peft-merged-qkv.safetensors")
    with torch.no_grad():
        half = forward(model, inputs)
        by_hand = forward(fused(base_sd, merged, LORA_ALPHA / LORA_RANK, merged_layout=True), inputs)
    assert torch.equal(half, load_file(lora_dir / "cases" / "peft_scale0.5.expected.safetensors")["output"])
    want = load_file(lora_dir / "cases" / "peft-merged-qkv.expected.safetensors")["output"]
    assert rel_err(by_hand, want) < 1e-5


def self_check(out):
    """Reload every written file from disk and recompute with diffusers; everything must match exactly."""
    dit, lora_dir = out / "dit", out / "lora"
    for case in CASES:
        path = dit / "cases" / f"{case}.inputs.safetensors"
        with safe_open(path, "pt") as f:
            model_name = f.metadata()["model"]
        got = forward_captured(load_model(dit, model_name), load_file(path))
        want = load_file(dit / "cases" / f"{case}.expected.safetensors")
        assert got.keys() == want.keys(), case
        for k in want:
            assert torch.equal(got[k], want[k]), f"{case}/{k}: max diff {(got[k] - want[k]).abs().max()}"
    base_sd = load_file(dit / "tiny" / "diffusion_pytorch_model.safetensors")
    inputs = load_file(dit / "cases" / "batch_mask.inputs.safetensors")
    for fmt in ("peft", "diffsynth", "kohya", "comfy"):
        with torch.no_grad():
            got = forward(load_lora_with_diffusers(base_sd, lora_dir, f"{fmt}.safetensors"), inputs)
        assert torch.equal(got, load_file(lora_dir / "cases" / f"{fmt}.expected.safetensors")["output"]), fmt
    check_lora_extras(base_sd, lora_dir, inputs)
    for case, fname, _ in GRAD_CASES:
        want = load_file(lora_dir / "cases" / fname)
        model = load_lora_with_diffusers(base_sd, lora_dir, "peft.safetensors")
        output, grads = lora_grads(model, load_file(dit / "cases" / f"{case}.inputs.safetensors"), want["dy"])
        assert torch.equal(output, want["output"]), fname
        for k, v in grads.items():
            err = (v - want[k]).abs().max().item()
            assert err <= 1e-6 * max(want[k].abs().max().item(), 1e-30), f"{fname} {k}: {err}"
    print("self-check: all cases reproduced from the files on disk")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", type=Path)
    args = ap.parse_args()
    # One thread: the CPU matmul's rounding depends on how the work is split between threads, so the bytes would
    # otherwise depend on the core count (the values agree to ~1e-6 either way).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    out = args.out
    for sub in ("dit", "lora"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("dit/cases", "lora/cases"):
        (out / sub).mkdir(parents=True)

    model = new_tiny()
    randomise(model, WEIGHT_SEED)
    write_models(model, out / "dit")
    models = {"tiny": model, "tiny-sharded": model, "tiny-comfy": model, "tiny-merged": model,
              "tiny-bf16": bf16_rounded(model), "tiny-2511": tiny_from(model.state_dict(), zero_cond_t=True)}
    check_every_path_matters(models)
    write_cases(models, out / "dit" / "cases")

    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    batch_inputs = load_file(out / "dit" / "cases" / "batch_mask.inputs.safetensors")
    peft_model = write_lora(base_sd, out, batch_inputs)
    write_grads(peft_model, out / "dit" / "cases", out / "lora" / "cases")
    for path in sorted([*(out / "dit").rglob("*.safetensors"), *(out / "lora").rglob("*.safetensors")]):
        canonicalise_header(path)
    self_check(out)


if __name__ == "__main__":
    main()
