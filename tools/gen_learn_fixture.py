#!/usr/bin/env python3
"""The learnable-signal fixture of the training proof (tests/train/learns.rs, docs/training.md "A learnable signal
end to end"): a tiny VAE that really reconstructs pictures, and two small datasets in the layouts people have.

The tiny pipelines of tests/fixtures/pipeline have a random VAE, which renders every latent as much the same grey:
a LoRA can move the latents of a picture, but not its colour. Here the same VAE architecture (diffusers'
AutoencoderKLQwenImage; gen_pipeline_fixtures' VAE_BASE with dim_mult [1, 2, 2]: base_dim 4, z_dim 4, spatial
factor 4) gets constructed weights (`construct_vae`) that make it a colour-faithful 4x4 box filter, so that "the
picture moves toward the target colour" can be measured on decoded pictures. Its latents_mean / latents_std are the
per-channel statistics of its `latent_dist.mode()` over 32x32 pictures of random flat colours, splits and gradients
with a ±24 noise pattern, as the real config's are over real pictures.

Writes, under OUT (default tests/fixtures/train/learn; OUT/README.md is left alone):
  vae/config.json, vae/diffusion_pytorch_model.safetensors
      the trained VAE (diffusers save_pretrained); a test pipeline folder is tests/fixtures/pipeline/<name> with
      this vae/ in place of its own
  kohya/2_zq/p{0..3}.png + .txt
      text-to-image: 4 pictures of one colour TARGET (0.86, 0.16, 0.16) with a ±24 noise pattern, captions
      "zq picture <i>" (the trigger word zq); the folder prefix 2_ repeats each twice (kohya)
  edit/metadata.csv, edit/in/p{0..7}.png, edit/out/p{0..7}.png
      edit pairs in DiffSynth-Studio's layout (columns image, prompt, edit_image): `in` is a flat random colour in
      [0.15, 0.85] with a ±16 noise pattern, `out` is its colour inverse 255 − in (a fixed transformation of the
      input picture), the prompt "invert the colours"
  edit/heldout/in.png, edit/heldout/out.png
      a pair not in metadata.csv (a colour none of the training inputs has), for the held-out sample

Run from the repository root (the reference env comes from /work/shared/tools/refenv.sh):
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_learn_fixture.py [--out DIR]
Deterministic (a few seconds). At the end the VAE is reloaded with from_pretrained and decode(encode(x)) is compared
with the 4x4 box-pixelated x on fresh pictures and on the dataset's; the script fails above 1e-3.
"""
import argparse
import csv
import io
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLQwenImage

sys.path.insert(0, str(Path(__file__).parent))
import gen_pipeline_fixtures as gp  # noqa: E402

SIDE = 32
TARGET = (0.86, 0.16, 0.16)
TRAIN_SEED = 20251201
DATA_SEED = 20251202
# Held-out edit input: a colour away from every training input's.
HELDOUT = (0.25, 0.70, 0.55)


def random_picture(g, kind):
    """[3, SIDE, SIDE] in [0, 1]: a flat colour, a split of two colours (vertical or horizontal) or a linear gradient
    between two colours, plus a uniform ±24/255 noise pattern."""
    a, b = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
    y, x = torch.meshgrid(torch.linspace(0, 1, SIDE), torch.linspace(0, 1, SIDE), indexing="ij")
    if kind == 0:
        img = a.expand(3, SIDE, SIDE)
    elif kind == 1:
        t = torch.rand(1, generator=g).item()
        cut = (x if torch.rand(1, generator=g).item() < 0.5 else y) < 0.25 + 0.5 * t
        img = torch.where(cut, a, b)
    else:
        t = (x if torch.rand(1, generator=g).item() < 0.5 else y)[None]
        img = a * (1 - t) + b * t
    noise = (torch.randint(-24, 25, (3, SIDE, SIDE), generator=g) / 255.0)
    return (img + noise).clamp(0, 1)


def batch(g, n):
    return torch.stack([random_picture(g, i % 3) for i in range(n)])


def to_vae(px):
    """[B, 3, H, W] in [0, 1] → the VAE's [B, 3, 1, H, W] in [-1, 1]."""
    return (px * 2 - 1)[:, :, None]


# The VAE's config: gen_pipeline_fixtures' VAE_BASE with dim_mult [1, 2, 2], so that no decoder stage is narrower
# than the 4 channels (r, g, b, C) the construction carries (VAE_BASE's [1, 1, 2] narrows to 2 before the last block).
VAE_CONFIG = dict(gp.VAE_BASE, dim_mult=[1, 2, 2])
# The constant channel: large against the colours, so that the per-pixel RMS norms of the heads divide the colour
# channels by (nearly) the same number for every colour (|rgb|^2 / C^2 <= 3e-6).
C = 1024.0
# The decoder head's colour gamma: keeps silu's argument below 2e-4, where silu(a) = a/2 to 1e-4.
DECODER_GAMMA = 1.0 / 16
# Latent k = sum_c M[k][c] * rgb_c: three orthonormal columns of a 4x4 Hadamard matrix / 2 (the decoder uses M^T).
M = 0.5 * torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])


def construct_vae():
    """An AutoencoderKLQwenImage (the real architecture, VAE_CONFIG) whose weights make it a colour-faithful box
    filter, set by construction instead of training (tiny VAEs of this design barely train: per-pixel RMS norms over
    4 channels; see docs/training.md).

    Every residual branch ends in a zero conv2 (and every attention in a zero proj), so each block passes its input
    through its shortcut. Encoder: conv_in puts r, g, b in channels 0-2 and C in channel 3; the 4 -> 8 shortcut
    adds -r, -g, -b in channels 4-6; each downsample averages 2x2 pixels; at the head silu(a) - silu(-a) = a undoes
    the nonlinearity exactly and conv_out writes the mean M.rgb (log-variance 0), so latent_dist.mode() is M applied to
    the 4x4 box average of the picture. Decoder: conv_in writes M^T.z and C, the upsamplers copy (nearest), the head's
    small gamma keeps silu linear, conv_out scales back. Reconstruction is the 4x4-pixelated picture to ~1e-4."""
    torch.manual_seed(TRAIN_SEED)
    vae = AutoencoderKLQwenImage(**VAE_CONFIG, latents_mean=[0.0] * gp.VAE_Z, latents_std=[1.0] * gp.VAE_Z).eval()
    g = torch.Generator().manual_seed(TRAIN_SEED)
    last = 2  # the causal 3-tap convolutions see a single frame through their last temporal tap
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif ".conv1." in name:  # live but multiplied away by the zero conv2 after it
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.zero_()
        enc, dec = vae.encoder, vae.decoder
        for c in range(3):
            enc.conv_in.weight[c, c, last, 1, 1] = 1.0
        enc.conv_in.bias[3] = C
        for name, m in vae.named_modules():
            if name.endswith("conv_shortcut") and hasattr(m, "weight"):
                w = m.weight  # [out, in, 1, 1, 1]
                for c in range(min(w.shape[0], w.shape[1])):
                    w[c, c, 0, 0, 0] = 1.0
                if name.startswith("encoder") and w.shape[1] == 4 and w.shape[0] == 8:
                    for c in range(3):
                        w[4 + c, c, 0, 0, 0] = -1.0
            if name.endswith("resample.1") and name.startswith("encoder"):
                for c in range(m.weight.shape[0]):
                    m.weight[c, c, :2, :2] = 0.25
            if name.endswith("resample.1") and name.startswith("decoder"):
                for c in range(4):
                    m.weight[c, c, 1, 1] = 1.0
        width = enc.norm_out.gamma.shape[0]
        assert width == 8, width
        s = C / math.sqrt(width)  # undoes the head norm: a = v * sqrt(8) / |u|, |u| ~ C
        for k in range(gp.VAE_Z):
            for c in range(3):
                enc.conv_out.weight[k, c, last, 1, 1] = M[k, c] * s
                enc.conv_out.weight[k, 4 + c, last, 1, 1] = -M[k, c] * s
        for k in range(2 * gp.VAE_Z):
            vae.quant_conv.weight[k, k, 0, 0, 0] = 1.0
        for k in range(gp.VAE_Z):
            vae.post_quant_conv.weight[k, k, 0, 0, 0] = 1.0
        for c in range(3):
            for k in range(gp.VAE_Z):
                dec.conv_in.weight[c, k, last, 1, 1] = M[k, c]
        dec.conv_in.bias[3] = C
        head = dec.norm_out.gamma.shape[0]
        assert head == 4, head
        dec.norm_out.gamma[:3] = DECODER_GAMMA
        for c in range(3):  # a = v * sqrt(4) * gamma / |u|, silu(a) ~ a / 2: out = w * gamma * v / C
            dec.conv_out.weight[c, c, last, 1, 1] = C / DECODER_GAMMA
    with torch.no_grad():
        mus = torch.cat([vae.encode(to_vae(batch(g, 64))).latent_dist.mode() for _ in range(4)])
    mean = mus.mean(dim=(0, 2, 3, 4)).double().tolist()
    std = mus.std(dim=(0, 2, 3, 4)).double().tolist()
    vae.register_to_config(latents_mean=[round(v, 4) for v in mean], latents_std=[round(v, 4) for v in std])
    return vae


def u8(px):
    """[3, H, W] in [0, 1] → PIL RGB (round half up, as the pictures are read back exactly)."""
    a = (px.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return PIL.Image.fromarray(a, "RGB")


def png(img, path):
    """PNG bytes independent of the PIL version's default compression choices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)
    path.write_bytes(buf.getvalue())


def flat(g, colour, spread):
    c = torch.tensor(colour).view(3, 1, 1)
    noise = torch.randint(-spread, spread + 1, (3, SIDE, SIDE), generator=g) / 255.0
    return (c + noise).clamp(0, 1)


def write_data(out):
    g = torch.Generator().manual_seed(DATA_SEED)
    kohya = out / "kohya" / "2_zq"
    for i in range(4):
        png(u8(flat(g, TARGET, 24)), kohya / f"p{i}.png")
        (kohya / f"p{i}.txt").write_text(f"zq picture {i}\n")
    edit = out / "edit"
    rows = []
    for i in range(8):
        colour = (0.15 + 0.7 * torch.rand(3, generator=g)).tolist()
        a = u8(flat(g, colour, 16))
        png(a, edit / "in" / f"p{i}.png")
        png(PIL.Image.fromarray(255 - np.asarray(a), "RGB"), edit / "out" / f"p{i}.png")
        rows.append((f"out/p{i}.png", "invert the colours", f"in/p{i}.png"))
    with open(edit / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "prompt", "edit_image"])
        w.writerows(rows)
    a = u8(flat(g, HELDOUT, 16))
    png(a, edit / "heldout" / "in.png")
    png(PIL.Image.fromarray(255 - np.asarray(a), "RGB"), edit / "heldout" / "out.png")


def read(path):
    return torch.from_numpy(np.asarray(PIL.Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def check(out):
    vae = AutoencoderKLQwenImage.from_pretrained(out / "vae", torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(DATA_SEED + 1)
    pictures = list(batch(g, 48)) + [read(p) for p in sorted(out.rglob("*.png"))]
    with torch.no_grad():
        x = torch.stack(pictures)
        rec = ((vae.decode(vae.encode(to_vae(x)).latent_dist.mode()).sample[:, :, 0] + 1) / 2).clamp(0, 1)
    box = torch.nn.functional.avg_pool2d(x, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
    err = (rec - box).abs().max().item()
    colour = (rec.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().max().item()
    print(f"{len(pictures)} pictures: decode(encode(x)) vs the 4x4 box-pixelated x: max |error| {err:.2e}; "
          f"worst mean-colour error {colour:.2e}")
    assert err < 1e-3 and colour < 1e-3, "the VAE does not reconstruct as constructed"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/train/learn")
    out = Path(ap.parse_args().out)
    torch.set_num_threads(1)
    for sub in ("vae", "kohya", "edit"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    construct_vae().save_pretrained(out / "vae", safe_serialization=True)
    write_data(out)
    check(out)


if __name__ == "__main__":
    main()
