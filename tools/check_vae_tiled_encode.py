"""Reference for the VAE's tiled encode (not recorded in tests/fixtures): diffusers 0.42.1's
`enable_tiling(16, 24, 12, 16)` + `encode(x).latent_dist.mode()` on the vae_encode case, written
to the path given (default /tmp/wgdit_vae_tiled_encode.safetensors). The ignored test
`vae_tiled_encode_matches_diffusers` in tests/parity/vae.rs reads it from WGDIT_VAE_TILED_ENCODE_REF.

    LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/check_vae_tiled_encode.py [out]
"""
import sys

import torch
from diffusers import AutoencoderKLQwenImage
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wgdit_vae_tiled_encode.safetensors"
vae = AutoencoderKLQwenImage.from_pretrained("tests/fixtures/pipeline/t2i/vae").eval()
for p in vae.parameters():  # fresh, aligned memory (fixture README: mmapped views round differently)
    p.data = p.data.clone()
x = load_file("tests/fixtures/pipeline/cases/vae_encode.safetensors")["x"]
with torch.no_grad():
    vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=24,
                      tile_sample_stride_height=12, tile_sample_stride_width=16)
    tiled = vae.encode(x).latent_dist.mode()
    vae.disable_tiling()
    plain = vae.encode(x).latent_dist.mode()
print("tiled vs untiled rel-L2:", float((tiled - plain).norm() / plain.norm()))
save_file({"latents_tiled": tiled.contiguous()}, out)
print("wrote", out, tuple(tiled.shape))
