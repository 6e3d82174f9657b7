"""Reference crops for `wgdit cache` (tests/train/cache.rs): DiffSynth-Studio's training crop,
`ImageCropAndResize.crop_and_resize` (diffsynth/core/data/operators.py):

    scale = max(target_width / width, target_height / height)
    image = torchvision.transforms.functional.resize(image, (round(height*scale), round(width*scale)), BILINEAR)
    image = torchvision.transforms.functional.center_crop(image, (target_height, target_width))

On a PIL image torchvision's `resize` is `image.resize((w, h), Image.BILINEAR)` (and returns the image itself
when the size is unchanged), and `center_crop` crops at `int(round((H - th) / 2.0))`, `int(round((W - tw) / 2.0))`
(torchvision/transforms/functional.py); torchvision is not in the reference env, so those two lines are
written out here with Pillow 13.0.0 itself doing the resampling.

Writes tests/fixtures/train/crop.safetensors: per case `<name>/input` u8 [H, W, 3], `<name>/output`
u8 [th, tw, 3], and `__metadata__["cases"]` = [[name, [W, H], [tw, th], [rw, rh, left, top]], ...].

    LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_crop_fixture.py
"""

import json
import os

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "train", "crop.safetensors")

# (name, (W, H), (tw, th)): up- and downscales, crops on either axis, ties in the rounding.
CASES = [
    ("wide_up", (100, 60), (64, 64)),
    ("wide_down", (120, 72), (64, 64)),
    ("tall_tie", (40, 90), (32, 96)),
    ("near_same", (97, 61), (96, 32)),
    ("identity", (64, 64), (64, 64)),
    ("down_exact", (150, 100), (48, 32)),
    ("up_tie", (33, 17), (64, 32)),
]


def crop_and_resize(image, th, tw):
    width, height = image.size
    scale = max(tw / width, th / height)
    size = (round(width * scale), round(height * scale))
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    left = int(round((size[0] - tw) / 2.0))
    top = int(round((size[1] - th) / 2.0))
    return image.crop((left, top, left + tw, top + th)), [size[0], size[1], left, top]


def main():
    rng = np.random.default_rng(7)
    tensors, meta = {}, []
    for name, (w, h), (tw, th) in CASES:
        # noise plus a gradient, so both the filter taps and the crop offsets show
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.int64)
        grad = (np.arange(w)[None, :, None] * 255 // max(w - 1, 1) + np.arange(h)[:, None, None] * 3) % 256
        x = ((noise + grad) // 2).astype(np.uint8)
        out, plan = crop_and_resize(Image.fromarray(x, "RGB"), th, tw)
        tensors[f"{name}/input"] = x
        tensors[f"{name}/output"] = np.asarray(out, dtype=np.uint8).copy()
        meta.append([name, [w, h], [tw, th], plan])
    save_file(tensors, OUT, metadata={"cases": json.dumps(meta), "pillow": Image.__version__})
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
