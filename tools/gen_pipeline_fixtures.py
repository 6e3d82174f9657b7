#!/usr/bin/env python3
"""Reference fixtures for image generation: tiny diffusers pipeline folders, VAE cases and whole-pipeline runs.

Everything is computed in float32 on the CPU (one thread) by diffusers 0.42.1's own QwenImagePipeline,
QwenImageEditPipeline, QwenImageEditPlusPipeline, AutoencoderKLQwenImage and FlowMatchEulerDiscreteScheduler; nothing
here reimplements them. Weights and inputs are random with fixed seeds, so two runs give byte-identical files.

Writes, under OUT (default tests/fixtures/pipeline; tests/fixtures/pipeline/README.md describes every file):
  t2i/ edit/ edit-plus/ edit-2511/   pipeline folders (model_index.json, scheduler/, transformer/, vae/), all holding
                                     the same tiny transformer and VAE weights; edit-2511's transformer has zero_cond_t
  inputs/*.png                       the input pictures (VAE encode input, two edit references)
  cases/<case>.safetensors + .json   inputs, outputs and per-step captures of each case; the JSON records the call
  cases/<case>.png                   the generated picture as the pipeline's output_type="pil" would give it

The prompts are random embeddings (no text encoder): diffusers accepts prompt_embeds with text_encoder=None,
tokenizer=None, processor=None and never touches them. The Edit pipelines resize their references to areas that
are literals / module constants in diffusers (1024*1024, CONDITION_IMAGE_SIZE, VAE_IMAGE_SIZE); the script patches
the module so that these areas are small (see `patched_areas`).

Run from the repository root (the reference env comes from /work/shared/tools/refenv.sh):
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_pipeline_fixtures.py [--out DIR]
At the end every folder is reloaded with from_pretrained and every case is re-run from the files on disk; the
script fails unless everything is reproduced exactly. It deletes and rewrites OUT (default
tests/fixtures/pipeline) except OUT/README.md. Takes about 20 s on one core.
"""
import argparse
import contextlib
import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn as nn
from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline,
                       QwenImageEditPlusPipeline, QwenImagePipeline, QwenImageTransformer2DModel)
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageRMS_norm
from diffusers.models.normalization import RMSNorm
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_module
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus_module
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file, save_file

# --------------------------------------------------------------------------------------------------- configs

# The dit/ fixtures' tiny model with 2 heads of 8 (D = 16) instead of 16: every folder holds a full copy of the
# weights, and 4 copies of the D = 32 model (348 KB each) would not fit the size budget.
TRANSFORMER = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=8,
                   num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=[4, 2, 2], guidance_embeds=False)
POOLED_PROJECTION_DIM = 768  # legacy key of the real transformer/config.json (ignored by diffusers, kept on save)

# Spatial factor 2 ** len(temperal_downsample) = 4, and the encoder downsamples len(dim_mult) - 1 = 2 times: the
# pipelines' vae_scale_factor agrees with the network. Decoder up blocks: upsample3d, upsample2d, none.
VAE_Z = 4
VAE_FACTOR = 4
VAE_BASE = dict(base_dim=4, z_dim=VAE_Z, dim_mult=[1, 1, 2], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True], dropout=0.0, input_channels=3)

# Qwen/Qwen-Image scheduler/scheduler_config.json (spec qwen-image-dit.md §6.1; the Edit repos are the same).
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                 base_image_seq_len=256, max_image_seq_len=8192, invert_sigmas=False, shift_terminal=0.02,
                 use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                 time_shift_type="exponential", stochastic_sampling=False)

# model_index.json entries of the real repos for the components these folders leave out.
TEXT_COMPONENTS = {"text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
                   "tokenizer": ["transformers", "Qwen2Tokenizer"],
                   "processor": ["transformers", "Qwen2VLProcessor"]}

# folder: (pipeline class, zero_cond_t, text components of that class)
FOLDERS = {
    "t2i": (QwenImagePipeline, False, ("text_encoder", "tokenizer")),
    "edit": (QwenImageEditPipeline, False, ("text_encoder", "tokenizer", "processor")),
    "edit-plus": (QwenImageEditPlusPipeline, False, ("text_encoder", "tokenizer", "processor")),
    "edit-2511": (QwenImageEditPlusPipeline, True, ("text_encoder", "tokenizer", "processor")),
}

TRANSFORMER_SEED = 20250701
VAE_SEED = 20250702
LATENT_STATS_SEED = 20250703

# Input pictures: name -> (width, height, seed).
PICTURES = {"vae_encode": (44, 28, 31), "ref_a": (37, 29, 32), "ref_b": (23, 41, 33)}

# Edit reference areas used instead of diffusers' 1024*1024 (VAE / Edit v1) and 384*384 (Edit-Plus vision images).
REF_AREA = 48 * 48
CONDITION_AREA = 40 * 40

# VAE decode cases: latents shape and seed; tiled decode parameters (sample pixels).
VAE_DECODE_LATENTS = (1, VAE_Z, 1, 9, 13)
TILED_LATENTS = (1, VAE_Z, 1, 8, 9)
TILING = dict(tile_sample_min_height=16, tile_sample_min_width=24, tile_sample_stride_height=12,
              tile_sample_stride_width=16)

# Pipeline cases. "prompt" / "negative": (S, mask) or None; mask None = all ones. "noise": "latents" (passed explicitly as
# `latents=`) or "generator" (generator=torch.Generator("cpu").manual_seed(seed)).
CASES = {
    "t2i_cfg": dict(folder="t2i", seed=42, noise="latents", width=48, height=32, steps=3, true_cfg_scale=4.0,
                    prompt=(9, [1] * 7 + [0] * 2), negative=(5, None)),
    "t2i_cfg_seed": dict(folder="t2i", seed=42, noise="generator", width=48, height=32, steps=3,
                         true_cfg_scale=4.0, prompt=(9, [1] * 7 + [0] * 2), negative=(5, None), same_as="t2i_cfg"),
    "t2i_nocfg": dict(folder="t2i", seed=7, noise="generator", width=24, height=40, steps=5, true_cfg_scale=None,
                      prompt=(6, None), negative=None),
    "edit": dict(folder="edit", seed=11, noise="generator", width=None, height=None, steps=3, true_cfg_scale=4.0,
                 prompt=(8, None), negative=(6, [1] * 5 + [0]), images="ref_a"),
    "edit_plus": dict(folder="edit-plus", seed=12, noise="generator", width=32, height=24, steps=3,
                      true_cfg_scale=4.0, prompt=(10, None), negative=(4, None), images=["ref_a", "ref_b"]),
    "edit_2511": dict(folder="edit-2511", seed=13, noise="generator", width=24, height=32, steps=3,
                      true_cfg_scale=4.0, prompt=(7, [1] * 5 + [0] * 2), negative=(5, None),
                      images=["ref_b", "ref_a"]),
    "edit_plus_single": dict(folder="edit-plus", seed=14, noise="generator", width=16, height=24, steps=2,
                             true_cfg_scale=None, prompt=(6, None), negative=None, images="ref_b"),
}


# ------------------------------------------------------------------------------------------------- weights

def dit_linear_gain(module_name):
    """As tools/gen_dit_fixtures.py: W ~ N(0, c²/fan_in) with these c (modulation and output projections larger)."""
    if module_name.endswith(("img_mod.1", "txt_mod.1")) or module_name == "norm_out.linear":
        return 1.5
    if module_name.endswith(("to_out.0", "to_add_out", "timestep_embedder.linear_2")):
        return 2.0
    return 1.0


def randomise_transformer(model, seed):
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            module_name, kind = name.rsplit(".", 1)
            module = modules[module_name]
            if isinstance(module, nn.Linear) and kind == "weight":
                p.copy_(torch.randn(p.shape, generator=g) * dit_linear_gain(module_name) / math.sqrt(p.shape[1]))
            elif isinstance(module, nn.Linear) and kind == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif isinstance(module, RMSNorm) and kind == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"no init rule for transformer parameter {name}")


def vae_conv_gain(name):
    """Std multiplier c in W ~ N(0, c²/fan_in), fan_in = in_channels × spatial taps (kh·kw; the temporal taps of a
    3×3×3 kernel are drawn the same way, but only the last one acts on a single frame). Chosen by measuring: the
    attention logits are large enough for peaked softmaxes, the residual branches and the attention visibly move the
    outputs, and the decoded image has rms ≈ 0.4 with about 1% of its values clamped (check_vae_paths prints)."""
    if name.endswith("to_qkv.weight"):
        return 2.5
    if name.endswith("proj.weight"):
        return 1.5
    if name == "decoder.conv_out.weight":
        return 0.6
    return 1.0


def randomise_vae(vae, seed):
    """Conv weights N(0, c²/fan_in); conv biases N(0, 0.05²); RMS-norm gammas 1 + 0.2·N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(vae.named_modules())
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters()):
            module_name, kind = name.rsplit(".", 1)
            module = modules[module_name]
            if isinstance(module, QwenImageRMS_norm) and kind == "gamma":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and kind == "weight":
                spatial = p.shape[-2] * p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * vae_conv_gain(name) / math.sqrt(p.shape[1] * spatial))
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and kind == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                raise RuntimeError(f"no init rule for VAE parameter {name}")


def latent_stats():
    """Non-trivial latents_mean ~ N(0, 0.5²) and latents_std ~ U(0.6, 2.0), rounded to 4 decimals (like the real
    config's lists)."""
    g = torch.Generator().manual_seed(LATENT_STATS_SEED)
    mean = (torch.randn(VAE_Z, generator=g, dtype=torch.float64) * 0.5).tolist()
    std = (0.6 + 1.4 * torch.rand(VAE_Z, generator=g, dtype=torch.float64)).tolist()
    return [round(v, 4) for v in mean], [round(v, 4) for v in std]


def new_vae():
    mean, std = latent_stats()
    vae = AutoencoderKLQwenImage(**VAE_BASE, latents_mean=mean, latents_std=std).eval()
    randomise_vae(vae, VAE_SEED)
    return vae


def new_transformer(zero_cond_t=False, state_dict=None):
    model = QwenImageTransformer2DModel(**TRANSFORMER, zero_cond_t=zero_cond_t)
    model.register_to_config(pooled_projection_dim=POOLED_PROJECTION_DIM)
    if state_dict is None:
        randomise_transformer(model, TRANSFORMER_SEED)
    else:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def new_scheduler():
    return FlowMatchEulerDiscreteScheduler(**SCHEDULER)


def owned(model):
    """Move every parameter into freshly allocated memory. from_pretrained leaves tensors that view the mmapped file
    (not 64-byte aligned), and torch's CPU kernels then round differently (~1e-6); the self-check demands equality."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model


def build_pipeline(folder, transformer, vae):
    cls, zero_cond_t, text = FOLDERS[folder]
    if zero_cond_t:
        transformer = new_transformer(True, transformer.state_dict())
    kwargs = dict(scheduler=new_scheduler(), vae=vae, transformer=transformer, **{k: None for k in text})
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_folder(pipe, folder, path):
    """diffusers' save_pretrained, then the null text-component entries of model_index.json replaced by the real
    repos' entries (same JSON layout as diffusers writes: indent 2, keys sorted, trailing newline)."""
    pipe.save_pretrained(path, safe_serialization=True)
    index_path = path / "model_index.json"
    index = json.loads(index_path.read_text())
    for name in FOLDERS[folder][2]:
        assert index[name] == [None, None], (folder, name, index[name])
        index[name] = TEXT_COMPONENTS[name]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def load_folder(path, folder):
    cls, zero_cond_t, text = FOLDERS[folder]
    pipe = cls.from_pretrained(path, dtype=torch.float32, **{k: None for k in text})
    assert type(pipe) is cls and bool(pipe.transformer.config.zero_cond_t) == zero_cond_t
    owned(pipe.transformer.eval())
    owned(pipe.vae.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -------------------------------------------------------------------------------------------------- inputs

def make_picture(width, height, seed):
    """Smooth but varied RGB: per channel a gradient plus 4 random plane waves, mapped into [8, 247], uint8."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64) / height,
                          torch.arange(width, dtype=torch.float64) / width, indexing="ij")
    channels = []
    for _ in range(3):
        c = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) @ torch.stack([x, y]).view(2, -1)
        c = c.view(height, width)
        for _ in range(4):
            fx, fy, phase = (torch.rand(3, generator=g, dtype=torch.float64) * torch.tensor([8.0, 8.0, 6.283])).tolist()
            c = c + 0.5 * torch.rand(1, generator=g, dtype=torch.float64).item() * torch.sin(
                6.283 * (fx * x + fy * y) + phase)
        c = (c - c.min()) / (c.max() - c.min())
        channels.append(8 + 239 * c)
    return torch.stack(channels, -1).round().to(torch.uint8).numpy()


def write_pictures(inputs):
    for name, (w, h, seed) in PICTURES.items():
        PIL.Image.fromarray(make_picture(w, h, seed), mode="RGB").save(inputs / f"{name}.png", format="PNG")


def read_picture(path):
    img = PIL.Image.open(path)
    img.load()
    assert img.mode == "RGB"
    return img


def pixels_to_x(u8):
    """[H, W, 3] uint8 -> [1, 3, 1, H, W] f32 in [-1, 1], through VaeImageProcessor's own steps
    (pil_to_numpy: f32 / 255; numpy_to_pt; normalize: 2x - 1), as the Edit pipelines do before unsqueeze(2)."""
    x = VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(PIL.Image.fromarray(u8)))
    x = VaeImageProcessor.normalize(x).unsqueeze(2)
    by_hand = 2.0 * (torch.from_numpy(u8.astype(np.float32)) / 255.0) - 1.0
    assert torch.equal(x[0, :, 0], by_hand.permute(2, 0, 1)), "x != 2 * (u8 / 255) - 1"
    return x


def text_inputs(case, seed):
    """Random prompt embeddings; entries under mask 0 are random too (not zero), so ignoring the mask shows."""
    spec = CASES[case]
    g = torch.Generator().manual_seed(1000 + seed)
    out = {}
    for key, item in (("prompt_embeds", spec["prompt"]), ("negative_prompt_embeds", spec["negative"])):
        if item is None:
            continue
        s, mask = item
        out[key] = torch.randn(1, s, TRANSFORMER["joint_attention_dim"], generator=g)
        out[key + "_mask"] = torch.tensor([mask if mask is not None else [1] * s], dtype=torch.int64)
    return out


def noise_shape(width, height):
    """prepare_latents: randn of (B, 1, C, 2·(H // (f·2)), 2·(W // (f·2))), then packed."""
    return (1, 1, VAE_Z, 2 * (height // (VAE_FACTOR * 2)), 2 * (width // (VAE_FACTOR * 2)))


# --------------------------------------------------------------------------------------------- running

@contextlib.contextmanager
def patched_areas(log):
    """Small reference areas exactly where diffusers uses them:
    - pipeline_qwenimage_edit.calculate_dimensions: the one call in QwenImageEditPipeline.__call__ has the literal
      target_area 1024*1024 (it sets the VAE reference size, the vision-encoder size and the default output size);
      the wrapper maps 1024*1024 -> REF_AREA.
    - pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE -> REF_AREA and CONDITION_IMAGE_SIZE -> CONDITION_AREA (module
      globals read at call time). Edit-Plus's default output size, calculate_dimensions(1024 * 1024, ratio of the
      last image), is left alone (the cases pass width/height); its wrapper only logs.
    Every call is appended to `log` as (module, area asked, area used, ratio, result)."""
    orig_edit, orig_plus = edit_module.calculate_dimensions, plus_module.calculate_dimensions
    saved = plus_module.VAE_IMAGE_SIZE, plus_module.CONDITION_IMAGE_SIZE

    def edit_dims(target_area, ratio):
        used = REF_AREA if target_area == 1024 * 1024 else target_area
        result = orig_edit(used, ratio)
        log.append(("edit", target_area, used, ratio, result))
        return result

    def plus_dims(target_area, ratio):
        result = orig_plus(target_area, ratio)
        log.append(("edit_plus", target_area, target_area, ratio, result))
        return result

    edit_module.calculate_dimensions, plus_module.calculate_dimensions = edit_dims, plus_dims
    plus_module.VAE_IMAGE_SIZE, plus_module.CONDITION_IMAGE_SIZE = REF_AREA, CONDITION_AREA
    try:
        yield
    finally:
        edit_module.calculate_dimensions, plus_module.calculate_dimensions = orig_edit, orig_plus
        plus_module.VAE_IMAGE_SIZE, plus_module.CONDITION_IMAGE_SIZE = saved


class Capture:
    """Hooks on one pipeline call: every transformer call (inputs + output), every VAE encode/decode, every
    image_processor.resize, and the latents after each scheduler step (callback_on_step_end)."""

    def __init__(self, pipe):
        self.pipe, self.calls, self.encodes, self.decodes, self.resizes, self.steps = pipe, [], [], [], [], []
        self.handles = [
            pipe.transformer.register_forward_pre_hook(self._pre, with_kwargs=True),
            pipe.transformer.register_forward_hook(self._post, with_kwargs=True),
        ]
        vae, proc = pipe.vae, pipe.image_processor
        enc, dec, resize = vae.encode, vae.decode, proc.resize

        def encode(x, *a, **k):
            out = enc(x, *a, **k)
            self.encodes.append((x.detach().clone(), out.latent_dist.mode().detach().clone()))
            return out

        def decode(z, *a, **k):
            out = dec(z, *a, **k)
            sample = out[0] if isinstance(out, tuple) else out.sample
            self.decodes.append((z.detach().clone(), sample.detach().clone()))
            return out

        def resize_(image, height, width, *a, **k):
            out = resize(image, height, width, *a, **k)
            if isinstance(out, PIL.Image.Image):
                self.resizes.append((height, width, np.array(out)))
            return out

        vae.encode, vae.decode, proc.resize = encode, decode, resize_
        self.restore = lambda: (delattr(vae, "encode"), delattr(vae, "decode"), delattr(proc, "resize"))

    def _pre(self, _m, args, kwargs):
        assert not args
        mask = kwargs.get("encoder_hidden_states_mask")
        self.calls.append({"hidden_states": kwargs["hidden_states"].detach().clone(),
                           "timestep": kwargs["timestep"].detach().clone(),
                           "mask": None if mask is None else mask.detach().clone(),
                           "text_len": kwargs["encoder_hidden_states"].shape[1],
                           "img_shapes": copy.deepcopy(kwargs["img_shapes"])})

    def _post(self, _m, _args, _kwargs, out):
        self.calls[-1]["output"] = (out[0] if isinstance(out, tuple) else out.sample).detach().clone()

    def callback(self, _pipe, _i, _t, kwargs):
        self.steps.append(kwargs["latents"].detach().clone())
        return {}

    def close(self):
        for h in self.handles:
            h.remove()
        self.restore()


def call_kwargs(case, tensors, pictures):
    """The exact keyword arguments of the pipeline call (tensors from the case file, PIL images from inputs/)."""
    spec = CASES[case]
    kw = dict(num_inference_steps=spec["steps"], output_type="pt",
              prompt_embeds=tensors["prompt_embeds"], prompt_embeds_mask=tensors["prompt_embeds_mask"])
    if spec["negative"] is not None:
        kw.update(negative_prompt_embeds=tensors["negative_prompt_embeds"],
                  negative_prompt_embeds_mask=tensors["negative_prompt_embeds_mask"])
    if spec["true_cfg_scale"] is not None:
        kw["true_cfg_scale"] = spec["true_cfg_scale"]
    if spec["width"] is not None:
        kw.update(width=spec["width"], height=spec["height"])
    if "images" in spec:
        imgs = spec["images"]
        kw["image"] = [pictures[n] for n in imgs] if isinstance(imgs, list) else pictures[imgs]
    if spec["noise"] == "latents":
        kw["latents"] = tensors["latents_init"]
    else:
        kw["generator"] = torch.Generator("cpu").manual_seed(spec["seed"])
    return kw


def run_case(pipe, case, tensors, pictures):
    """Run one case; returns (record tensors, derived info). `tensors` holds the inputs (text, and latents_init for
    noise="latents")."""
    spec = CASES[case]
    log = []
    cap = Capture(pipe)
    try:
        with patched_areas(log), torch.no_grad():
            image = pipe(**call_kwargs(case, tensors, pictures), callback_on_step_end=cap.callback).images
    finally:
        cap.close()
    sched = pipe.scheduler
    n_steps = spec["steps"]
    cfg = spec["negative"] is not None and (spec["true_cfg_scale"] or 4.0) > 1
    assert len(cap.calls) == n_steps * (2 if cfg else 1) and len(cap.steps) == n_steps and len(cap.decodes) == 1
    img_shapes = [tuple(s) for s in cap.calls[0]["img_shapes"][0]]
    s_target = img_shapes[0][1] * img_shapes[0][2]
    height, width = image.shape[2], image.shape[3]
    rec = dict(tensors)
    rec["img_shapes"] = torch.tensor(img_shapes, dtype=torch.int64)
    rec["noise"] = tensors.get("noise")
    first = cap.calls[0]["hidden_states"]
    rec["latents_init"] = first[:, :s_target].clone()
    if len(img_shapes) > 1:
        rec["image_latents"] = first[:, s_target:].clone()
        for c in cap.calls:
            assert torch.equal(c["hidden_states"][:, s_target:], rec["image_latents"]), "references changed"
    rec["sigmas"] = sched.sigmas.clone()
    rec["timesteps"] = sched.timesteps.clone()
    latents = rec["latents_init"]
    cfg_ratio = []
    s = spec["true_cfg_scale"]
    for i in range(n_steps):
        cond = cap.calls[(2 if cfg else 1) * i]["output"][:, :s_target]
        rec[f"step{i}.timestep"] = cap.calls[(2 if cfg else 1) * i]["timestep"]
        rec[f"step{i}.noise_pred_cond"] = cond
        pred = cond
        if cfg:
            uncond = cap.calls[2 * i + 1]["output"][:, :s_target]
            assert torch.equal(cap.calls[2 * i + 1]["timestep"], rec[f"step{i}.timestep"])
            rec[f"step{i}.noise_pred_uncond"] = uncond
            comb = uncond + s * (cond - uncond)  # the pipeline's own expressions, in the same order
            ratio = torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True)
            pred = comb * ratio
            cfg_ratio.append(ratio)
        if cfg:
            rec[f"step{i}.noise_pred"] = pred  # without CFG the guided prediction is noise_pred_cond itself
        dt = sched.sigmas[i + 1] - sched.sigmas[i]
        assert torch.equal(latents + dt * pred, cap.steps[i]), f"{case}: step {i} not reproduced"
        latents = cap.steps[i]
        rec[f"step{i}.latents"] = latents
    rec["latents_final"] = pipe._unpack_latents(latents, height, width, VAE_FACTOR)
    rec["vae_input"] = cap.decodes[0][0]
    rec["image"] = image
    rec["image_u8"] = torch.from_numpy(np.ascontiguousarray(
        (VaeImageProcessor.pt_to_numpy(image)[0] * 255).round().astype("uint8")))
    refs = []
    for k, (x, mode) in enumerate(cap.encodes):
        u8 = ((x[0, :, 0].permute(1, 2, 0) + 1) / 2 * 255).round().to(torch.uint8).numpy()
        assert torch.equal(pixels_to_x(u8), x), "VAE input is not 2 * (u8 / 255) - 1"
        assert any(np.array_equal(r[2], u8) for r in cap.resizes), "VAE input is not a LANCZOS resize output"
        rec[f"ref{k}.vae_u8"] = torch.from_numpy(u8)
        rec[f"ref{k}.vae_latents_raw"] = mode
        refs.append({"vae_size_wh": [x.shape[4], x.shape[3]], "latent_hw": [mode.shape[3], mode.shape[4]]})
    if isinstance(pipe, QwenImageEditPlusPipeline):
        # resize calls: per image, the condition (vision) resize, then preprocess's VAE resize
        assert len(cap.resizes) == 2 * len(refs)
        for k in range(len(refs)):
            h, w, arr = cap.resizes[2 * k]
            rec[f"ref{k}.condition_u8"] = torch.from_numpy(np.ascontiguousarray(arr))
            refs[k]["condition_size_wh"] = [w, h]
    elif isinstance(pipe, QwenImageEditPipeline):
        refs[0]["condition_size_wh"] = refs[0]["vae_size_wh"]  # v1: the same resized PIL image feeds both
    rec = {k: v.contiguous() for k, v in rec.items() if v is not None}
    info = dict(img_shapes=[list(s) for s in img_shapes], image_seq_len=s_target, output_size_wh=[width, height],
                do_true_cfg=cfg, references=refs,
                calculate_dimensions_calls=[{"module": m, "target_area_asked": a, "target_area_used": u,
                                             "ratio_w_over_h": r, "result_wh": list(res[:2])}
                                            for m, a, u, r, res in log],
                sigmas=rec["sigmas"].tolist(), timesteps=rec["timesteps"].tolist(),
                transformer_timesteps=[rec[f"step{i}.timestep"].item() for i in range(n_steps)],
                mask_passed_to_transformer={
                    "cond": "None" if cap.calls[0]["mask"] is None else "prompt_embeds_mask",
                    **({"uncond": "None" if cap.calls[1]["mask"] is None else "negative_prompt_embeds_mask"}
                       if cfg else {})})
    if cfg_ratio:
        r = torch.cat(cfg_ratio)
        info["cfg_rescale_factor_range"] = [round(r.min().item(), 4), round(r.max().item(), 4)]
    return rec, info


def expected_noise(case, width, height):
    return torch.randn(noise_shape(width, height), generator=torch.Generator("cpu").manual_seed(CASES[case]["seed"]))


def mu_for(seq_len):
    """diffusers' own calculate_shift with the scheduler config, as the pipelines call it."""
    return calculate_shift(seq_len, SCHEDULER["base_image_seq_len"], SCHEDULER["max_image_seq_len"],
                           SCHEDULER["base_shift"], SCHEDULER["max_shift"])


def json_call(case):
    """The call as text, for the JSON record."""
    spec = CASES[case]
    args = [f"num_inference_steps={spec['steps']}", 'output_type="pt"',
            "prompt_embeds=T['prompt_embeds']", "prompt_embeds_mask=T['prompt_embeds_mask']"]
    if spec["negative"] is not None:
        args += ["negative_prompt_embeds=T['negative_prompt_embeds']",
                 "negative_prompt_embeds_mask=T['negative_prompt_embeds_mask']"]
    if spec["true_cfg_scale"] is not None:
        args.append(f"true_cfg_scale={spec['true_cfg_scale']}")
    if spec["width"] is not None:
        args += [f"width={spec['width']}", f"height={spec['height']}"]
    if "images" in spec:
        imgs = spec["images"]
        pic = lambda n: f"PIL.Image.open('inputs/{n}.png')"
        args.append("image=" + (f"[{', '.join(pic(n) for n in imgs)}]" if isinstance(imgs, list) else pic(imgs)))
    if spec["noise"] == "latents":
        args.append("latents=T['latents_init']")
    else:
        args.append(f"generator=torch.Generator('cpu').manual_seed({spec['seed']})")
    cls = FOLDERS[spec["folder"]][0].__name__
    return f"{cls}.from_pretrained('{spec['folder']}', text_encoder=None, tokenizer=None" + (
        ", processor=None" if spec["folder"] != "t2i" else "") + f")({', '.join(args)})"


def generate_case(pipes, case, pictures):
    spec = CASES[case]
    pipe = pipes[spec["folder"]]
    tensors = text_inputs(case, CASES[spec.get("same_as", case)]["seed"])
    if spec["noise"] == "latents":
        noise = expected_noise(case, spec["width"], spec["height"])
        tensors["noise"] = noise
        tensors["latents_init"] = pipe._pack_latents(noise, 1, VAE_Z, noise.shape[3], noise.shape[4])
    rec, info = run_case(pipe, case, tensors, pictures)
    height, width = rec["image"].shape[2:]
    noise = expected_noise(case, width, height)
    packed = pipe._pack_latents(noise, 1, VAE_Z, noise.shape[3], noise.shape[4])
    assert torch.equal(rec["latents_init"], packed), f"{case}: initial latents != pack(torch.randn(shape))"
    rec["noise"] = noise
    mu = mu_for(info["image_seq_len"])
    info["mu"] = mu
    if "same_as" in spec:
        other = load_file(CASE_DIR / f"{spec['same_as']}.safetensors")
        assert rec.keys() == other.keys(), (case, sorted(set(rec) ^ set(other)))
        for k in other:
            assert torch.equal(rec[k], other[k]), f"{case} differs from {spec['same_as']} in {k}"
        print(f"case {case}: identical to {spec['same_as']} (generator path == explicit latents)")
    return rec, info


# ------------------------------------------------------------------------------------------------- writing

CASE_DIR = None  # set in main


def canonicalise_header(path):
    """Sort the safetensors header's __metadata__ keys (the writer's hash map order changes between runs)."""
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


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def tensor_table(rec):
    return {k: f"{list(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in sorted(rec.items())}


def save_case(name, rec, meta, record):
    save_file(rec, CASE_DIR / f"{name}.safetensors", metadata={"case": name, **meta})
    write_json(CASE_DIR / f"{name}.json", {**record, "tensors": tensor_table(rec)})


def write_pipeline_case(pipes, case, pictures):
    spec = CASES[case]
    rec, info = generate_case(pipes, case, pictures)
    extra = {}
    if "images" in spec:
        names = spec["images"] if isinstance(spec["images"], list) else [spec["images"]]
        last = pictures[names[-1]].size
        if FOLDERS[spec["folder"]][0] is QwenImageEditPlusPipeline:
            extra["default_output_size_wh"] = {
                "diffusers_literal_1024x1024": list(plus_module.calculate_dimensions(1024 * 1024, last[0] / last[1])),
                "at_ref_area": list(plus_module.calculate_dimensions(REF_AREA, last[0] / last[1])),
                "note": "Edit-Plus: calculate_dimensions(1024 * 1024, W/H of the last image), then floored to a "
                        "multiple of 8 (vae_scale_factor * 2); unused here because width/height are passed"}
        else:
            extra["default_output_size_wh"] = {
                "at_ref_area": info["output_size_wh"],
                "note": "Edit v1: the one calculate_dimensions call (patched to REF_AREA) sets the VAE reference "
                        "size, the vision-encoder size and the default output size; this case uses the default"}
        extra["ref_area"] = REF_AREA
        if FOLDERS[spec["folder"]][0] is QwenImageEditPlusPipeline:
            extra["condition_area"] = CONDITION_AREA
        extra["input_pictures"] = {n: {"file": f"inputs/{n}.png", "size_wh": list(pictures[n].size)} for n in names}
    record = {"case": case, "folder": spec["folder"], "pipeline_class": FOLDERS[spec["folder"]][0].__name__,
              "call": json_call(case), "seed": spec["seed"], "noise_source": spec["noise"],
              "num_inference_steps": spec["steps"], "true_cfg_scale_passed": spec["true_cfg_scale"],
              **info, **extra}
    if "same_as" in spec:  # bit-identical to the other case (asserted): only the JSON record is written
        record["expected"] = f"cases/{spec['same_as']}.safetensors (all tensors bit-identical) and " \
                             f"cases/{spec['same_as']}.png"
        write_json(CASE_DIR / f"{case}.json", {**record, "tensors": tensor_table(rec)})
    else:
        save_case(case, rec, {"folder": spec["folder"], "pipeline": record["pipeline_class"]}, record)
        PIL.Image.fromarray(rec["image_u8"].numpy(), mode="RGB").save(CASE_DIR / f"{case}.png", format="PNG")
    stats = f"image rms {rec['image'].pow(2).mean().sqrt():.3f} range [{rec['image'].min():.3f}, " \
            f"{rec['image'].max():.3f}], latents_final rms {rec['latents_final'].pow(2).mean().sqrt():.3f}"
    print(f"case {case:17s} {record['pipeline_class']:26s} img_shapes {info['img_shapes']} {stats}"
          + (f" cfg rescale {info['cfg_rescale_factor_range']}" if "cfg_rescale_factor_range" in info else ""))
    return rec


def vae_cases(vae, pictures):
    """vae_encode, vae_decode, vae_tiled_decode records."""
    out = {}
    u8 = np.array(pictures["vae_encode"])
    x = pixels_to_x(u8)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    mean = torch.tensor(vae.config.latents_mean).view(1, VAE_Z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, VAE_Z, 1, 1, 1)
    mode = dist.mode()
    out["vae_encode"] = ({"pixels_u8": torch.from_numpy(u8), "x": x, "latents": mode, "logvar": dist.logvar,
                          "latents_normalized": (mode - mean) / std},
                         {"call": "vae.encode(x).latent_dist.mode(); x = 2 * (u8 / 255) - 1 as f32, [1,3,1,H,W]; "
                                  "latents_normalized = (latents - latents_mean) / latents_std as in "
                                  "QwenImageEditPipeline._encode_vae_image; logvar = latent_dist.logvar "
                                  "(clamped to [-30, 20])",
                          "input_picture": "inputs/vae_encode.png"})
    g = torch.Generator().manual_seed(51)
    z = torch.randn(VAE_DECODE_LATENTS, generator=g)
    with torch.no_grad():
        img = vae.decode(z).sample
    out["vae_decode"] = ({"latents": z, "image": img[:, :, 0]},
                         {"call": "vae.decode(latents).sample[:, :, 0] (raw latents, no mean/std applied; "
                                  "output clamped to [-1, 1])"})
    z = torch.randn(TILED_LATENTS, generator=g)
    tiled = copy.deepcopy(vae)
    tiled.enable_tiling(**TILING)
    with torch.no_grad():
        a = tiled.decode(z).sample
        b = vae.decode(z).sample
    rows = len(range(0, z.shape[3], TILING["tile_sample_stride_height"] // VAE_FACTOR))
    cols = len(range(0, z.shape[4], TILING["tile_sample_stride_width"] // VAE_FACTOR))
    assert (rows, cols) == (3, 3) and not torch.equal(a, b)
    out["vae_tiled_decode"] = ({"latents": z, "image_tiled": a[:, :, 0], "image_untiled": b[:, :, 0]},
                               {"call": "vae.enable_tiling(**tiling); vae.decode(latents).sample[:, :, 0] "
                                        "(image_untiled: the same without enable_tiling)",
                                "tiling": TILING, "tiles_rows_cols": [rows, cols],
                                "tile_latent_min_hw": [TILING["tile_sample_min_height"] // VAE_FACTOR,
                                                       TILING["tile_sample_min_width"] // VAE_FACTOR],
                                "tile_latent_stride_hw": [TILING["tile_sample_stride_height"] // VAE_FACTOR,
                                                          TILING["tile_sample_stride_width"] // VAE_FACTOR],
                                "blend_pixels_hw": [TILING["tile_sample_min_height"] - TILING["tile_sample_stride_height"],
                                                    TILING["tile_sample_min_width"] - TILING["tile_sample_stride_width"]]})
    return out


def write_vae_cases(vae, pictures):
    cases = vae_cases(vae, pictures)
    for name, (rec, record) in cases.items():
        rec = {k: v.contiguous() for k, v in rec.items()}
        save_case(name, rec, {"folder": "t2i/vae"}, {"case": name, "vae": "t2i/vae (identical in every folder)",
                                                     **record})
    enc = cases["vae_encode"][0]
    dec = cases["vae_decode"][0]["image"]
    t = cases["vae_tiled_decode"][0]
    print(f"vae_encode latents {tuple(enc['latents'].shape)} rms {enc['latents'].pow(2).mean().sqrt():.3f}; "
          f"vae_decode image {tuple(dec.shape)} rms {dec.pow(2).mean().sqrt():.3f}, "
          f"clamped {(dec.abs() >= 1).float().mean():.3f}; tiled vs untiled rel diff "
          f"{rel(t['image_tiled'], t['image_untiled']):.3f}, tiled max |x| {t['image_tiled'].abs().max():.3f} "
          f"(not clamped), tiles {cases['vae_tiled_decode'][1]['tiles_rows_cols']}")


# ------------------------------------------------------------------------------------------------ sanity

def rel(got, want):
    return ((got - want).norm() / want.norm()).item()


def check_vae_paths(vae, pictures):
    """How much the attention, the residual branches and the shortcut convs move the VAE outputs."""
    x = pixels_to_x(np.array(pictures["vae_encode"]))
    z = torch.randn(VAE_DECODE_LATENTS, generator=torch.Generator().manual_seed(51))

    def run(m):
        with torch.no_grad():
            return m.encode(x).latent_dist.mode(), m.decode(z).sample

    base_lat, base_img = run(vae)

    def variant(edit):
        m = copy.deepcopy(vae)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if edit(name):
                    p.zero_()
        lat, img = run(m)
        return rel(lat, base_lat), rel(img, base_img)

    checks = {
        "mid-block attention off (proj = 0)": variant(lambda n: "attentions.0.proj" in n),
        "residual branches off (conv2 = 0)": variant(lambda n: ".conv2." in n),
        "first resnet's residual branch off": variant(lambda n: n.startswith(("encoder.down_blocks.0.conv2",
                                                                              "decoder.up_blocks.0.resnets.0.conv2"))),
        "shortcut convs = 0": variant(lambda n: "conv_shortcut" in n),
    }
    for name, (a, b) in checks.items():
        print(f"sanity vae: {name:38s} latents change {a:.3f}, decoded image change {b:.3f}")
    assert all(a > 0.03 and b > 0.03 for a, b in checks.values()), checks
    mean = torch.tensor(vae.config.latents_mean)
    std = torch.tensor(vae.config.latents_std)
    print(f"sanity vae: latents_mean {mean.tolist()}, latents_std {std.tolist()}")


def check_pipeline_paths(pipes, pictures):
    """How much each input moves the final image (relative L2 on the [0,1] image, and on latents_final)."""
    def run(case, folder=None, **over):
        spec = CASES[case]
        pipe = pipes[folder or spec["folder"]]
        t = text_inputs(case, CASES[spec.get("same_as", case)]["seed"])
        kw = call_kwargs(case, {**t, "latents_init": None}, pictures)
        if spec["noise"] == "latents":
            kw.pop("latents")
            kw["generator"] = torch.Generator("cpu").manual_seed(spec["seed"])
        kw.update(over)
        kw = {k: v for k, v in kw.items() if v is not None}
        with patched_areas([]), torch.no_grad():
            return pipe(**kw).images

    g = torch.Generator().manual_seed(77)
    base = run("t2i_cfg")
    t = text_inputs("t2i_cfg", 42)
    flip = lambda n: pictures[n].transpose(PIL.Image.FLIP_LEFT_RIGHT)
    checks = {
        "t2i_cfg: new prompt_embeds": (base, run("t2i_cfg", prompt_embeds=torch.randn(1, 9, 24, generator=g))),
        "t2i_cfg: new negative_prompt_embeds": (base, run("t2i_cfg", negative_prompt_embeds=torch.randn(
            1, 5, 24, generator=g))),
        "t2i_cfg: true_cfg_scale 4 -> 1 (no CFG)": (base, run("t2i_cfg", true_cfg_scale=1.0)),
        "t2i_cfg: true_cfg_scale 4 -> 3": (base, run("t2i_cfg", true_cfg_scale=3.0)),
        "t2i_cfg: prompt mask -> all ones": (base, run("t2i_cfg", prompt_embeds_mask=torch.ones_like(
            t["prompt_embeds_mask"]))),
        "t2i_cfg: other noise (seed 43)": (base, run("t2i_cfg", generator=torch.Generator("cpu").manual_seed(43))),
        "t2i_cfg: 3 -> 4 steps": (base, run("t2i_cfg", num_inference_steps=4)),
    }
    e = run("edit")
    checks["edit: reference flipped left-right"] = (e, run("edit", image=flip("ref_a")))
    p = run("edit_plus")
    checks["edit_plus: second reference flipped"] = (p, run("edit_plus", image=[pictures["ref_a"], flip("ref_b")]))
    checks["edit_plus: references swapped"] = (p, run("edit_plus", image=[pictures["ref_b"], pictures["ref_a"]]))
    z = run("edit_2511")
    checks["edit_2511: zero_cond_t off (edit-plus folder)"] = (z, run("edit_2511", folder="edit-plus"))
    out = {}
    for name, (a, b) in checks.items():
        out[name] = rel(b, a)
        print(f"sanity pipeline: image change from {name:44s} {out[name]:.3f}")
    assert all(v > 0.01 for v in out.values()), out
    return out


# ------------------------------------------------------------------------------------------------ self-check

def self_check(out):
    """Reload every folder with from_pretrained and re-run every case from the files on disk: exact equality."""
    t2i = out / "t2i"
    for folder in FOLDERS:
        for f in ("vae/diffusion_pytorch_model.safetensors", "vae/config.json",
                  "transformer/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
            assert (out / folder / f).read_bytes() == (t2i / f).read_bytes(), f"{folder}/{f} differs from t2i"
    pipes = {folder: load_folder(out / folder, folder) for folder in FOLDERS}
    pictures = {n: read_picture(out / "inputs" / f"{n}.png") for n in PICTURES}
    for case in CASES:
        want = load_file(out / "cases" / f"{CASES[case].get('same_as', case)}.safetensors")
        inputs = {k: v for k, v in want.items() if k.startswith(("prompt_embeds", "negative_prompt_embeds"))}
        if CASES[case]["noise"] == "latents":
            inputs["latents_init"] = want["latents_init"]
        got, _ = run_case(pipes[CASES[case]["folder"]], case, inputs, pictures)
        got["noise"] = want["noise"]
        assert got.keys() == want.keys(), (case, sorted(set(got) ^ set(want)))
        for k in want:
            assert torch.equal(got[k], want[k]), f"{case}/{k}: max diff {(got[k].float() - want[k].float()).abs().max()}"
        png = np.array(read_picture(out / "cases" / f"{CASES[case].get('same_as', case)}.png"))
        assert np.array_equal(png, want["image_u8"].numpy()), case
    vae = pipes["edit"].vae
    for name, (rec, _) in vae_cases(vae, pictures).items():
        want = load_file(out / "cases" / f"{name}.safetensors")
        assert rec.keys() == want.keys(), name
        for k in want:
            assert torch.equal(rec[k].contiguous(), want[k]), f"{name}/{k}"
    print("self-check: every folder reloaded with from_pretrained, every case reproduced from the files on disk")


def main():
    global CASE_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/pipeline", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)  # CPU rounding depends on how work is split between threads
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        if child.name != "README.md":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for sub in ("inputs", "cases"):
        (out / sub).mkdir()
    CASE_DIR = out / "cases"

    write_pictures(out / "inputs")
    pictures = {n: read_picture(out / "inputs" / f"{n}.png") for n in PICTURES}
    transformer, vae = new_transformer(), new_vae()
    pipes = {}
    for folder in FOLDERS:
        pipes[folder] = build_pipeline(folder, transformer, vae)
        write_folder(pipes[folder], folder, out / folder)
        assert pipes[folder].vae_scale_factor == VAE_FACTOR
    n_tr = sum(p.numel() for p in transformer.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    print(f"transformer {n_tr} parameters, VAE {n_vae} parameters")

    check_vae_paths(vae, pictures)
    write_vae_cases(vae, pictures)
    for case in CASES:
        write_pipeline_case(pipes, case, pictures)
    check_pipeline_paths(pipes, pictures)
    for path in sorted(out.rglob("*.safetensors")):
        canonicalise_header(path)
    self_check(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size of {out}: {total} bytes")


if __name__ == "__main__":
    main()
