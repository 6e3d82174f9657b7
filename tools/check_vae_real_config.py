"""The Qwen-Image VAE architecture at its real config (base_dim 96, dim_mult [1,2,4,4], 2 res blocks, 8x) with
random weights, against diffusers 0.42.1 in float32: writes a VAE folder and a reference (encode of a 48x32 image,
decode of 4x6 latents) under the given directory (default /tmp/wgdit_vae_real). The ignored test
`vae_real_config_matches_diffusers` in tests/parity/vae.rs reads it from WGDIT_VAE_REAL_DIR. (The fixtures' tiny VAE
has 1 res block and 2 downsamplings; this checks the real widths, 3 downsamplings and 3 resnets per up block.)

    LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/check_vae_real_config.py [dir]
"""
import os
import sys

import torch
from diffusers import AutoencoderKLQwenImage
from safetensors.torch import save_file

torch.set_num_threads(1)
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wgdit_vae_real"
torch.manual_seed(20250710)
vae = AutoencoderKLQwenImage().eval()  # the real config (diffusers' defaults)
with torch.no_grad():
    for name, p in vae.named_parameters():
        if name.endswith("gamma"):
            p.copy_(1 + 0.2 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.05 * torch.randn_like(p))
        else:
            fan_in = p[0].numel() // (p.shape[2] if p.dim() == 5 else 1)
            p.copy_(torch.randn_like(p) / fan_in**0.5)
vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
x = torch.rand(1, 3, 1, 32, 48) * 2 - 1
z = torch.randn(1, 16, 1, 4, 6)
with torch.no_grad():
    latents = vae.encode(x).latent_dist.mode()
    image = vae.decode(z).sample[:, :, 0]
save_file({"x": x.contiguous(), "latents": latents.contiguous(), "z": z.contiguous(), "image": image.contiguous()},
          os.path.join(out, "reference.safetensors"))
print("latents rms", float(latents.pow(2).mean().sqrt()), "image rms", float(image.pow(2).mean().sqrt()),
      "clamped", float((image.abs() == 1).float().mean()))
