"""Fixture for tests/train/schedule.rs: DiffSynth-Studio's own training schedule for Qwen-Image.

The numbers come from DiffSynth's `FlowMatchScheduler` itself (PyPI `diffsynth` 2.1.12,
`diffsynth/diffusion/flow_match.py`), not from a re-implementation. The module needs only torch
and numpy, so it is loaded straight from its file without installing the package:

    pip download --no-deps diffsynth==2.1.12 -d /tmp/ds && unzip -q /tmp/ds/diffsynth-*.whl -d /tmp/ds/src
    LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_schedule_fixture.py \
        /tmp/ds/src/diffsynth/diffusion/flow_match.py

Writes tests/fixtures/train/schedule.safetensors:
    timesteps, sigmas, weights [1000] f32   after FlowMatchScheduler("Qwen-Image").set_timesteps(1000, training=True)
    t_bf16 [1000] f32                       timesteps[i].to(bfloat16), as FlowMatchSFTLoss passes it
    snap [1000] i64                         argmin |timesteps - t_bf16[i]| (the index add_noise and
                                            training_weight look sigma and the weight up at)
"""
import importlib.util
import os
import sys

import torch
from safetensors.torch import save_file


def load_scheduler(path):
    spec = importlib.util.spec_from_file_location("flow_match", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FlowMatchScheduler


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/ds/src/diffsynth/diffusion/flow_match.py"
    sched = load_scheduler(path)("Qwen-Image")
    sched.set_timesteps(1000, training=True)
    ts, sig, w = sched.timesteps, sched.sigmas, sched.linear_timesteps_weights
    assert ts.dtype == torch.float32 and ts.shape == (1000,)
    t_bf16 = ts.to(torch.bfloat16)
    snap = []
    for i in range(1000):
        # exactly FlowMatchSFTLoss: timesteps[timestep_id] (shape (1,)) cast to bf16, then the
        # scheduler's argmin over the f32 table
        t = ts[torch.tensor([i])].to(dtype=torch.bfloat16)
        snap.append(int(torch.argmin((ts - t).abs())))
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "train", "schedule.safetensors")
    save_file(
        {
            "timesteps": ts.contiguous(),
            "sigmas": sig.contiguous(),
            "weights": w.float().contiguous(),
            "t_bf16": t_bf16.float().contiguous(),
            "snap": torch.tensor(snap, dtype=torch.int64),
        },
        out,
    )
    moved = sum(1 for i, s in enumerate(snap) if s != i)
    print(f"sigma[0,100,500,750,999] = {[round(float(sig[i]), 6) for i in (0, 100, 500, 750, 999)]}")
    print(f"weights: min {float(w.min()):.6f} max {float(w.max()):.6f} at sigma {float(sig[int(w.argmax())]):.4f}, mean {float(w.mean()):.6f}")
    print(f"bf16 snap moves {moved} of 1000 indices")


if __name__ == "__main__":
    main()
