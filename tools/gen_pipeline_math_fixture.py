"""Reference values for the pure-Rust pipeline pieces (noise, scheduler, CFG, sizes, resize, pixels).

Writes tests/fixtures/pipeline_math/pipeline_math.safetensors and the small input images under tests/fixtures/pipeline_math/images/, from
torch 2.15 (CPU, float32), diffusers 0.42.1, numpy 2 and Pillow 13.0.0. Deterministic: running it twice
gives byte-identical files.

    bash /work/shared/tools/refenv.sh /work/refenv
    LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_pipeline_math_fixture.py

torch's randn and norm kernels depend on the CPU dispatch level: this must run on an x86-64 CPU with
AVX2 or AVX-512 (both give the same values, checked). The portable-kernel noise (`noise_scalar/*`) is
made in a subprocess with ATEN_CPU_CAPABILITY=default.

Pattern images (`pattern()`, defined identically in tests/pipeline/resize.rs) stand in for large inputs; for
those the fixture keeps one FNV-1a-64 hash per output row instead of the pixels.
"""

import json
import math
import os
import subprocess
import sys
import zlib
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "pipeline_math")
IMAGES = os.path.join(FIXTURES, "images")

NOISE_SEEDS = [0, 42, 2**32 + 5]
NOISE_LENGTHS = [1, 15, 16, 17, 1000]
LATENT_SHAPE = [1, 1, 16, 128, 128]  # prepare_latents for 1024x1024 Qwen-Image
LATENT_KEEP = 2048


def latent_summary(x):
    flat = x.reshape(-1)
    sums = np.array([flat.astype(np.float64).sum(), (flat.astype(np.float64) ** 2).sum()])
    return flat[:LATENT_KEEP].copy(), flat[-LATENT_KEEP:].copy(), sums


def scalar_noise_child(out_path):
    """Runs under ATEN_CPU_CAPABILITY=default: torch's portable normal_fill."""
    import torch

    assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
    out = {}
    for seed in [0, 42]:
        for n in [16, 17, 1000]:
            g = torch.Generator("cpu").manual_seed(seed)
            out[f"noise_scalar/seed{seed}/n{n}"] = torch.randn(n, generator=g, dtype=torch.float32).numpy()
    g = torch.Generator("cpu").manual_seed(0)
    head, tail, sums = latent_summary(torch.randn(LATENT_SHAPE, generator=g, dtype=torch.float32).numpy())
    out["noise_scalar/seed0/latent_head"] = head
    out["noise_scalar/seed0/latent_tail"] = tail
    out["noise_scalar/seed0/latent_sums"] = sums
    np.savez(out_path, **out)


def noise(t):
    import torch

    for seed in NOISE_SEEDS:
        for n in NOISE_LENGTHS:
            g = torch.Generator("cpu").manual_seed(seed)
            t[f"noise/seed{seed}/n{n}"] = torch.randn(n, generator=g, dtype=torch.float32).numpy()
        g = torch.Generator("cpu").manual_seed(seed)
        lat = torch.randn(LATENT_SHAPE, generator=g, dtype=torch.float32).numpy()
        head, tail, sums = latent_summary(lat)
        t[f"noise/seed{seed}/latent_head"] = head
        t[f"noise/seed{seed}/latent_tail"] = tail
        t[f"noise/seed{seed}/latent_sums"] = sums
    # A 2-D shape with numel < 16 takes the per-element path like a 1-D one.
    g = torch.Generator("cpu").manual_seed(7)
    t["noise/seed7/shape3x5"] = torch.randn((3, 5), generator=g, dtype=torch.float32).numpy().reshape(-1)

    tmp = os.path.join(FIXTURES, ".scalar_noise_tmp.npz")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--scalar-noise", tmp], env=env, check=True)
    with np.load(tmp) as z:
        for k in z.files:
            t[k] = z[k]
    os.remove(tmp)


QWEN_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=0.9,
    base_image_seq_len=256,
    max_image_seq_len=8192,
    invert_sigmas=False,
    shift_terminal=0.02,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    time_shift_type="exponential",
    stochastic_sampling=False,
)


def pipeline_schedule(cfg, n, seq_len, sigmas=None):
    """Steps 5 of QwenImagePipeline.__call__, verbatim: linspace sigmas, calculate_shift, retrieve_timesteps."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps

    sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    sigmas = np.linspace(1.0, 1 / n, n) if sigmas is None else sigmas
    mu = calculate_shift(
        seq_len,
        sched.config.get("base_image_seq_len", 256),
        sched.config.get("max_image_seq_len", 4096),
        sched.config.get("base_shift", 0.5),
        sched.config.get("max_shift", 1.15),
    )
    timesteps, _ = retrieve_timesteps(sched, n, "cpu", sigmas=sigmas, mu=mu)
    dit_t = torch.stack([t.expand(1).to(torch.float32) / 1000 for t in timesteps]).reshape(-1)
    return sched, mu, timesteps, dit_t


def scheduler(t):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    for n in [1, 2, 5, 50]:
        for seq_len in [16, 256, 4096, 8192, 10000]:
            sched, mu, ts, dit_t = pipeline_schedule(QWEN_SCHEDULER, n, seq_len)
            k = f"sched/qwen/N{n}/L{seq_len}"
            t[k + "/sigmas"] = sched.sigmas.numpy()
            t[k + "/timesteps"] = ts.numpy()
            t[k + "/dit_timestep"] = dit_t.numpy()
            t[k + "/mu"] = np.array([mu], dtype=np.float64)
    for n in [2, 3, 7, 50, 1000]:
        t[f"sched/linspace/N{n}"] = np.linspace(1.0, 1 / n, n)
    custom = [1.0, 0.83, 0.6, 0.41, 0.25, 0.1, 0.03]
    sched, mu, ts, _ = pipeline_schedule(QWEN_SCHEDULER, len(custom), 4096, sigmas=custom)
    t["sched/custom/sigmas_in"] = np.array(custom, dtype=np.float64)
    t["sched/custom/mu"] = np.array([mu], dtype=np.float64)
    t["sched/custom/sigmas"] = sched.sigmas.numpy()
    t["sched/custom/timesteps"] = ts.numpy()
    static = dict(QWEN_SCHEDULER, use_dynamic_shifting=False, shift=3.0, shift_terminal=None)
    sched, _, ts, _ = pipeline_schedule(static, 10, 4096)
    t["sched/static/N10/sigmas"] = sched.sigmas.numpy()
    t["sched/static/N10/timesteps"] = ts.numpy()
    linear = dict(QWEN_SCHEDULER, time_shift_type="linear")
    sched, mu, ts, _ = pipeline_schedule(linear, 20, 4096)
    t["sched/linear/N20/sigmas"] = sched.sigmas.numpy()
    t["sched/linear/N20/timesteps"] = ts.numpy()
    t["sched/linear/N20/mu"] = np.array([mu], dtype=np.float64)

    # step(): the denoising loop's calls with set_begin_index(0), 5 steps on a [2, 9, 64] latent.
    sched, _, ts, _ = pipeline_schedule(QWEN_SCHEDULER, 5, 4096)
    sched.set_begin_index(0)
    g = torch.Generator("cpu").manual_seed(1234)
    x = torch.randn(2, 9, 64, generator=g)
    vs = torch.randn(5, 2, 9, 64, generator=g) * 1.7
    t["sched/step/x0"] = x.numpy()
    t["sched/step/v"] = vs.numpy()
    outs = []
    for i, tt in enumerate(ts):
        x = sched.step(vs[i], tt, x, return_dict=False)[0]
        outs.append(x)
    t["sched/step/x"] = torch.stack(outs).numpy()

    os.makedirs(FIXTURES, exist_ok=True)
    FlowMatchEulerDiscreteScheduler.from_config(QWEN_SCHEDULER).save_config(FIXTURES)


def cfg(t):
    import torch

    g = torch.Generator("cpu").manual_seed(99)
    cases = [("c64", [1, 64, 64]), ("c16", [2, 5, 16]), ("c13", [2, 5, 13]), ("c7", [2, 5, 7]), ("c3", [2, 5, 3])]
    for name, shape in cases:
        cond = torch.randn(shape, generator=g) * 2.0
        neg = cond * 0.6 + torch.randn(shape, generator=g) * 0.5
        t[f"cfg/{name}/cond"] = cond.numpy()
        t[f"cfg/{name}/neg"] = neg.numpy()
        for scale in [4.0, 2.5]:
            # pipeline_qwenimage.py, QwenImagePipeline.__call__ (true CFG), verbatim
            true_cfg_scale = scale
            noise_pred, neg_noise_pred = cond, neg
            comb_pred = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)
            cond_norm = torch.norm(noise_pred, dim=-1, keepdim=True)
            noise_norm = torch.norm(comb_pred, dim=-1, keepdim=True)
            noise_pred = comb_pred * (cond_norm / noise_norm)
            t[f"cfg/{name}/s{scale}"] = noise_pred.numpy()
        t[f"cfg/{name}/norm"] = torch.norm(cond, dim=-1).numpy()


def dims(t, meta):
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    rng = np.random.RandomState(5)
    cases = []
    for k in range(1, 40, 2):  # square areas whose side is an odd multiple of 16: exact .5 ties
        cases.append(((16 * k) ** 2, 1, 1))
    for k in range(1, 30, 2):  # ratio 4 and 1/4 ties on width / height
        cases.append(((8 * k) ** 2, 4, 1))
        cases.append(((8 * k) ** 2, 1, 4))
    for area in [1024 * 1024, 384 * 384, 512 * 512, 1328 * 1328]:
        for w, h in [(1024, 1024), (1920, 1080), (1080, 1920), (768, 1024), (640, 480), (37, 29), (3000, 7), (7, 3000), (1, 1), (16384, 1)]:
            cases.append((area, w, h))
    for _ in range(200):
        cases.append((int(rng.choice([1024 * 1024, 384 * 384])), int(rng.randint(1, 5000)), int(rng.randint(1, 5000))))
    out = []
    for area, w, h in cases:
        a = edit.calculate_dimensions(area, w / h)[:2]
        b = plus.calculate_dimensions(area, w / h)
        assert tuple(a) == tuple(b)
        out.append(b)
    t["dims/calc/in"] = np.array(cases, dtype=np.int64)
    t["dims/calc/out"] = np.array(out, dtype=np.int64)

    # Pipeline-level sizes: the few lines of each __call__ that pick them, transcribed with their
    # source lines cited (running the pipelines needs the real models). 0 stands for None.
    vsf = 8
    t2i = []
    for w, h in [(0, 0), (1000, 1000), (1023, 17), (1024, 1328), (16, 16), (1920, 1080)]:
        # pipeline_qwenimage.py: `height = height or default_sample_size * vae_scale_factor`; the
        # latents are 2 * (height // 16) tall, so the decoded image is 16 * (height // 16).
        ow = w or 128 * vsf
        oh = h or 128 * vsf
        t2i.append((w, h, 2 * (int(ow) // (vsf * 2)) * vsf, 2 * (int(oh) // (vsf * 2)) * vsf))
    t["dims/t2i"] = np.array(t2i, dtype=np.int64)
    e_rows = []
    for (iw, ih), (w, h) in [((1024, 1024), (0, 0)), ((1920, 1080), (0, 0)), ((768, 1024), (0, 0)),
                             ((640, 480), (1000, 0)), ((37, 29), (0, 530)), ((500, 300), (1366, 777))]:
        # pipeline_qwenimage_edit.py lines 623-630
        calculated_width, calculated_height, _ = edit.calculate_dimensions(1024 * 1024, iw / ih)
        height = h or calculated_height
        width = w or calculated_width
        multiple_of = vsf * 2
        width = width // multiple_of * multiple_of
        height = height // multiple_of * multiple_of
        e_rows.append((iw, ih, w, h, width, height, calculated_width, calculated_height))
    t["dims/edit"] = np.array(e_rows, dtype=np.int64)
    plus_cases = [
        ([(1024, 1024)], (0, 0)),
        ([(1920, 1080), (768, 1024)], (0, 0)),
        ([(640, 480), (37, 29), (3000, 2000)], (0, 0)),
        ([(500, 300), (300, 500)], (1000, 1001)),
    ]
    p_rows = []
    for imgs, (w, h) in plus_cases:
        # pipeline_qwenimage_edit_plus.py lines 645-652 and 697-704
        calculated_width, calculated_height = plus.calculate_dimensions(1024 * 1024, imgs[-1][0] / imgs[-1][1])
        height = h or calculated_height
        width = w or calculated_width
        multiple_of = vsf * 2
        width = width // multiple_of * multiple_of
        height = height // multiple_of * multiple_of
        per = []
        for image_width, image_height in imgs:
            cw, ch = plus.calculate_dimensions(plus.CONDITION_IMAGE_SIZE, image_width / image_height)
            vw, vh = plus.calculate_dimensions(plus.VAE_IMAGE_SIZE, image_width / image_height)
            per.append([image_width, image_height, vw, vh, cw, ch])
        p_rows.append({"images": per, "requested": [w, h], "output": [width, height]})
    meta["dims/edit_plus"] = json.dumps(p_rows)


def pattern(w, h):
    """Deterministic test image: 16-px tiles alternating hashed noise and a smooth gradient."""
    x = np.arange(w, dtype=np.uint64)[None, :, None]
    y = np.arange(h, dtype=np.uint64)[:, None, None]
    c = np.arange(3, dtype=np.uint64)[None, None, :]
    m = np.uint64(0xFFFFFFFF)
    hsh = ((x * np.uint64(73856093)) ^ (y * np.uint64(19349663)) ^ (c * np.uint64(83492791))) & m
    hsh = ((hsh ^ (hsh >> np.uint64(13))) * np.uint64(0x5BD1E995)) & m
    hsh = hsh ^ (hsh >> np.uint64(15))
    noise = hsh & np.uint64(255)
    smooth = ((x * np.uint64(255) // np.uint64(max(w - 1, 1)) + y * np.uint64(255) // np.uint64(max(h - 1, 1)) + c * np.uint64(60)) // np.uint64(2)) % np.uint64(256)
    tile = ((x >> np.uint64(4)) + (y >> np.uint64(4))) & np.uint64(1)
    return np.where(tile == 1, noise, smooth).astype(np.uint8)


def fnv1a_rows(img):
    out = []
    for row in img.reshape(img.shape[0], -1):
        hv = 0xCBF29CE484222325
        for b in row.tobytes():
            hv = ((hv ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        out.append(hv)
    return np.array(out, dtype=np.uint64)


RESIZE_CASES = [
    # name, input (w, h), output (w, h), source ("random" stored, or "pattern"), keep ("full" or "hash")
    ("up_37x29_48x40", (37, 29), (48, 40), "random", "full"),
    ("down_23x41_16x32", (23, 41), (16, 32), "random", "full"),
    ("up_640x480_1024x768", (640, 480), (1024, 768), "pattern", "hash"),
    ("mixed_1000x10_33x333", (1000, 10), (33, 333), "pattern", "full"),
    ("mixed_10x1000_333x33", (10, 1000), (333, 33), "pattern", "full"),
    ("vfirst_48x200_40x20", (48, 200), (40, 20), "random", "full"),
    ("vonly_64x64_64x16", (64, 64), (64, 16), "pattern", "full"),
    ("honly_64x64_16x64", (64, 64), (16, 64), "pattern", "full"),
    ("honly_up_30x20_90x20", (30, 20), (90, 20), "random", "full"),
    ("up_1x1_5x3", (1, 1), (5, 3), "random", "full"),
    ("down_5x7_1x1", (5, 7), (1, 1), "random", "full"),
    ("vfirst_700x300_701x100", (700, 300), (701, 100), "pattern", "hash"),
    ("down_2000x1500_1024x768", (2000, 1500), (1024, 768), "pattern", "hash"),
    ("edit_1920x1080_1376x768", (1920, 1080), (1376, 768), "pattern", "hash"),
    ("cond_1024x1024_384x384", (1024, 1024), (384, 384), "pattern", "hash"),
]


def resize(t, meta):
    from PIL import Image
    from diffusers.image_processor import VaeImageProcessor

    proc = VaeImageProcessor(vae_scale_factor=16)
    rng = np.random.RandomState(11)
    names = []
    for name, (iw, ih), (ow, oh), source, keep in RESIZE_CASES:
        arr = rng.randint(0, 256, size=(ih, iw, 3)).astype(np.uint8) if source == "random" else pattern(iw, ih)
        if source == "random":
            t[f"resize/{name}/input"] = arr
        # VaeImageProcessor.resize(image, height, width) -> PIL image.resize((w, h), LANCZOS, reducing_gap=None)
        out = np.array(proc.resize(Image.fromarray(arr), oh, ow))
        assert out.shape == (oh, ow, 3)
        if keep == "full":
            t[f"resize/{name}/output"] = out
        else:
            t[f"resize/{name}/row_hash"] = fnv1a_rows(out)
        names.append(name)
    meta["resize/cases"] = json.dumps([[n, list(i), list(o), s, k] for n, i, o, s, k in RESIZE_CASES])


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(path, w, h, bit_depth, color_type, rows):
    """Minimal PNG writer for the formats Pillow cannot save (16-bit RGB(A)/LA, 2/4-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def pixels(t, meta):
    from PIL import Image, PngImagePlugin
    from diffusers.image_processor import VaeImageProcessor

    os.makedirs(IMAGES, exist_ok=True)
    rng = np.random.RandomState(21)
    w, h = 7, 5
    rgba = rng.randint(0, 256, size=(h, w, 4)).astype(np.uint8)
    files = []

    def save(name, im, **kw):
        p = os.path.join(IMAGES, name)
        im.save(p, **kw)
        files.append(name)

    save("rgb8.png", Image.fromarray(rgba[..., :3]))
    save("rgba8.png", Image.fromarray(rgba, "RGBA"))
    save("la8.png", Image.fromarray(rgba[..., :2].copy(), "LA"))
    save("l8.png", Image.fromarray(rgba[..., 0]))
    save("l1.png", Image.fromarray(rgba[..., 0] > 127))
    pal = Image.fromarray(rgba[..., :3]).quantize(colors=6, dither=Image.Dither.NONE)
    save("p8.png", pal)
    save("p8_trns.png", pal, transparency=2)
    save("i16.png", Image.fromarray((rgba[..., 0].astype(np.uint16) * 3 + rgba[..., 1].astype(np.uint16) % 7)))
    v16 = rng.randint(0, 65536, size=(h, w, 4)).astype(">u2")
    raw_png(os.path.join(IMAGES, "rgb16.png"), w, h, 16, 2, [v16[y, :, :3].tobytes() for y in range(h)])
    raw_png(os.path.join(IMAGES, "rgba16.png"), w, h, 16, 6, [v16[y].tobytes() for y in range(h)])
    raw_png(os.path.join(IMAGES, "la16.png"), w, h, 16, 4, [v16[y, :, :2].tobytes() for y in range(h)])
    g2 = rng.randint(0, 4, size=(h, 8)).astype(np.uint8)
    raw_png(os.path.join(IMAGES, "l2.png"), 8, h, 2, 0, [bytes([(r[0] << 6) | (r[1] << 4) | (r[2] << 2) | r[3], (r[4] << 6) | (r[5] << 4) | (r[6] << 2) | r[7]]) for r in g2])
    g4 = rng.randint(0, 16, size=(h, 8)).astype(np.uint8)
    raw_png(os.path.join(IMAGES, "l4.png"), 8, h, 4, 0, [bytes([(r[i] << 4) | r[i + 1] for i in range(0, 8, 2)]) for r in g4])
    files += ["rgb16.png", "rgba16.png", "la16.png", "l2.png", "l4.png"]
    smooth = pattern(32, 24)
    save("lossless.webp", Image.fromarray(smooth), lossless=True)
    save("photo.jpg", Image.fromarray(smooth), quality=90)
    save("photo444.jpg", Image.fromarray(smooth), quality=90, subsampling=0)
    for name in files:
        with Image.open(os.path.join(IMAGES, name)) as im:
            t[f"pixels/load/{name}"] = np.array(im.convert("RGB"))
    meta["pixels/load/files"] = json.dumps(files)

    info = PngImagePlugin.PngInfo()
    text = [["prompt", "a red fox, snow"], ["seed", "42"], ["latin", "caf\u00e9 \u00bd"], ["unicode", "\u65e5\u672c\u8a9e \u2713"]]
    for k, v in text:
        info.add_text(k, v)
    save("text.png", Image.fromarray(rgba[..., :3]), pnginfo=info)
    meta["pixels/text"] = json.dumps(text)

    # preprocess: all 256 levels in every channel, size already a multiple of 16 (no resampling).
    i = np.arange(16 * 32).reshape(16, 32)
    levels = np.stack([i % 256, 255 - i % 256, (i * 7) % 256], axis=-1).astype(np.uint8)
    t["pixels/pre/image"] = levels
    proc = VaeImageProcessor(vae_scale_factor=16)
    t["pixels/pre/out"] = proc.preprocess(Image.fromarray(levels)).numpy()

    import torch

    x = np.linspace(-1.05, 1.05, 3 * 32 * 64, dtype=np.float32)
    edges = ((np.arange(256, dtype=np.float32) + np.float32(0.5)) / np.float32(255)) * np.float32(2) - np.float32(1)
    x[: 3 * 256] = np.concatenate([edges, np.nextafter(edges, np.float32(2)), np.nextafter(edges, np.float32(-2))])
    x = x.reshape(1, 3, 32, 64)
    t["pixels/post/in"] = x
    t["pixels/post/pt"] = proc.postprocess(torch.from_numpy(x), output_type="pt").numpy()
    t["pixels/post/pil"] = np.array(proc.postprocess(torch.from_numpy(x), output_type="pil")[0])


DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("uint8"): "U8",
          np.dtype("int64"): "I64", np.dtype("uint64"): "U64"}


def save_safetensors(tensors, path, metadata):
    """The safetensors format with a sorted, canonical header (safetensors.numpy.save_file orders the
    header through a hash map, so its bytes change from run to run)."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--scalar-noise":
        scalar_noise_child(sys.argv[2])
        return
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    assert cap in ("AVX2", "AVX512"), f"needs an AVX2/AVX-512 x86-64 CPU, torch dispatches {cap}"
    torch.set_num_threads(1)
    t, meta = {}, {}
    noise(t)
    scheduler(t)
    cfg(t)
    dims(t, meta)
    resize(t, meta)
    pixels(t, meta)
    import PIL
    import diffusers

    meta["versions"] = json.dumps({"torch": torch.__version__.split("+")[0], "diffusers": diffusers.__version__,
                                   "pillow": PIL.__version__, "numpy": np.__version__})
    t = {k: np.ascontiguousarray(v) for k, v in sorted(t.items())}
    path = os.path.join(FIXTURES, "pipeline_math.safetensors")
    save_safetensors(t, path, meta)
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(t)} tensors")


if __name__ == "__main__":
    main()
