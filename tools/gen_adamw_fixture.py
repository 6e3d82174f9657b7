"""Fixture for src/kernels/adamw/tests.rs: three torch.optim.AdamW steps on a tiny f32 parameter.

Run with the reference env:
    LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_adamw_fixture.py
Writes tests/fixtures/adamw/adamw_torch.safetensors:
    p0 [37]; g1, g2, g3 [37]  (the raw gradients of steps 1..3)
    a.p1..a.p3, a.m3, a.v3    config A: lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0.01
    b.p1..b.p3                config B: lr 1e-2, betas (0.8, 0.99), eps 1e-6, wd 0.1, each step
                              grad *= 0.25 then clip_grad_norm_(max_norm=0.5)
    a.hyper, b.hyper [5] f64  (lr, beta1, beta2, eps, weight_decay)
"""
import os

import torch
from safetensors.torch import save_file

N = 37
HYPER = {
    "a": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    "b": dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
}
GRAD_SCALE, MAX_NORM = 0.25, 0.5


def run(name, p0, grads, out):
    h = HYPER[name]
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"], foreach=False)
    for i, g in enumerate(grads, 1):
        p.grad = g.clone()
        if name == "b":
            p.grad.mul_(GRAD_SCALE)
            torch.nn.utils.clip_grad_norm_([p], MAX_NORM)
        opt.step()
        out[f"{name}.p{i}"] = p.detach().clone()
    st = opt.state[p]
    out[f"{name}.m3"] = st["exp_avg"].clone()
    out[f"{name}.v3"] = st["exp_avg_sq"].clone()
    out[f"{name}.hyper"] = torch.tensor([h["lr"], *h["betas"], h["eps"], h["weight_decay"]], dtype=torch.float64)


def main():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(N, generator=g, dtype=torch.float32)
    # magnitudes 3, 0.1, 1: config B clips steps 1 and 3 but not step 2
    grads = [torch.randn(N, generator=g, dtype=torch.float32) * s for s in (3.0, 0.1, 1.0)]
    out = {"p0": p0, "g1": grads[0], "g2": grads[1], "g3": grads[2]}
    for name in HYPER:
        run(name, p0, grads, out)
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "adamw", "adamw_torch.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata={"torch": torch.__version__})
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
