"""Checks that LoRA and checkpoint files written by `wgdit convert` load in diffusers 0.42.1 / peft and give the
reference outputs of tests/fixtures (the `batch_mask` case). Not part of CI (needs the reference venv):

    bash /work/shared/tools/refenv.sh /work/refenv
    cargo build --bin wgdit
    LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/check_convert_with_diffusers.py target/debug/wgdit
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from gen_dit_fixtures import forward, load_lora_with_diffusers, rel_err, split_qkv  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests/fixtures"


def wgdit(binary, *args):
    subprocess.run([binary, "convert", *args], check=True, stdout=subprocess.DEVNULL)


def main(binary):
    base = load_file(FIX / "dit/tiny/diffusion_pytorch_model.safetensors")
    inputs = load_file(FIX / "dit/cases/batch_mask.inputs.safetensors")
    lora = FIX / "lora"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # (file written by wgdit, expected case)
        jobs = [
            (["--input", lora / "peft.safetensors", "--output", t / "merged.safetensors", "--to", "merged"], None),
            (["--input", t / "merged.safetensors", "--output", t / "back.safetensors", "--to", "standard"], "peft"),
            (["--input", lora / "kohya.safetensors", "--output", t / "from-kohya.safetensors", "--to", "standard"], "peft"),
            (["--input", lora / "peft-merged-qkv.safetensors", "--output", t / "split.safetensors", "--to", "standard"],
             "peft-merged-qkv"),
        ]
        for fmt in ["kohya", "comfyui", "diffsynth"]:
            jobs.append((["--input", t / "merged.safetensors", "--output", t / f"{fmt}.safetensors", "--to", "standard",
                          "--format", fmt], "peft"))
        worst = 0.0
        for args, case in jobs:
            wgdit(binary, *map(str, args))
            if case is None:
                continue
            out = Path(args[3])
            model = load_lora_with_diffusers(base, out.parent, weight_name=out.name)
            with torch.no_grad():
                got = forward(model, inputs)
            want = load_file(lora / f"cases/{case}.expected.safetensors")["output"]
            err = rel_err(got, want)
            worst = max(worst, err)
            print(f"{out.name:28s} loaded by diffusers, output vs {case}.expected: rel-L2 {err:.2e}")
        # A converted base checkpoint loads in diffusers and splits back to the same weights.
        wgdit(binary, "--input", FIX / "dit/tiny", "--output", t / "tiny-merged", "--to", "merged")
        merged = load_file(t / "tiny-merged/diffusion_pytorch_model.safetensors")
        assert all(torch.equal(split_qkv(merged)[k], v) for k, v in base.items())
        print("tiny -> merged: torch split gives the original weights bit for bit")
        assert worst < 1e-6, worst


if __name__ == "__main__":
    main(sys.argv[1])
