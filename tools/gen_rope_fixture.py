"""Writes tests/fixtures/rope/qwen_rope_tiny.safetensors from diffusers' own QwenEmbedRope (0.42.1).

Run: LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_rope_fixture.py

Tensors (all float32):
- tiny_img_cos / tiny_img_sin [S_img=21, 8], tiny_txt_cos / tiny_txt_sin [5, 8]: the forward of
  QwenEmbedRope(theta=10000, axes_dim=[8,4,4], scale_rope=True) for img_shapes [(1,3,5),(1,2,3)]
  and max_txt_seq_len=5 (rows = tokens, columns = complex pairs [frame 4 | height 2 | width 2]).
- real_pos_cos/sin, real_neg_cos/sin [rows, 64] with real_pos_index / real_neg_index (float32
  positions): every 31st row of pos_freqs (p = 0..4095) and neg_freqs (p = -4096..-1) for the real
  axes [16, 56, 56], to check the f32 angle arithmetic at large positions.
"""
import os
import torch
from safetensors.torch import save_file
from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = os.path.join(root, "tests", "fixtures", "rope", "qwen_rope_tiny.safetensors")

tiny = QwenEmbedRope(theta=10000, axes_dim=[8, 4, 4], scale_rope=True)
# forward(video_fhw, device, max_txt_seq_len): video_fhw is the per-sample img_shapes list; only [0] is used.
img, txt = tiny([[(1, 3, 5), (1, 2, 3)]], device=torch.device("cpu"), max_txt_seq_len=5)
assert img.shape == (21, 8) and txt.shape == (5, 8), (img.shape, txt.shape)

real = QwenEmbedRope(theta=10000, axes_dim=[16, 56, 56], scale_rope=True)
pos_rows = torch.arange(0, 4096, 31)
neg_rows = torch.arange(0, 4096, 31)
pos = real.pos_freqs[pos_rows]
neg = real.neg_freqs[neg_rows]

t = {
    "tiny_img_cos": img.real, "tiny_img_sin": img.imag,
    "tiny_txt_cos": txt.real, "tiny_txt_sin": txt.imag,
    "real_pos_cos": pos.real, "real_pos_sin": pos.imag,
    "real_neg_cos": neg.real, "real_neg_sin": neg.imag,
    "real_pos_index": pos_rows.float(), "real_neg_index": (neg_rows - 4096).float(),
}
t = {k: v.to(torch.float32).contiguous() for k, v in t.items()}
os.makedirs(os.path.dirname(out), exist_ok=True)
save_file(t, out)
print("wrote", out, {k: tuple(v.shape) for k, v in t.items()})
