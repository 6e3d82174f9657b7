#!/usr/bin/env python3
"""Table of the CUDA-parity suite: weights dtype × mode → error of `wgdit forward` vs the diffusers reference,
wgdit and PyTorch time per forward, and their ratio. numpy + safetensors only (no torch needed).

Reads, for each WORK/<dtype>/ given (as run.sh lays them out):
  reference.safetensors        `output` and the metadata written by make_reference.py (device, torch_ms, ...)
  wgdit-<mode>.safetensors     `output` of `wgdit forward --qkv <mode>`
  bench.json                   `wgdit bench dispatches --json` lines (mode, forward_ms, dispatches_per_step)

Errors are computed in float64: rel-L2 = |got − want|₂ / |want|₂ and max-abs = max |got − want| (with the
reference's max |want| alongside for scale). Exits 1 when any mode is missing or its rel-L2 exceeds --max-rel-l2
(issue 3 §5: 1e-4), after printing the whole table.
usage: python tools/cuda_parity/compare.py WORK/f32 WORK/bf16 [--json results.json]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open

MODES = ("standard", "merged", "fused")


def load(path):
    with safe_open(str(path), "np") as f:
        return f.get_tensor("output").astype(np.float64), f.metadata() or {}


def bench_ms(case):
    """forward_ms and dispatches_per_step per mode from `wgdit bench dispatches --json` (one object a line)."""
    path = case / "bench.json"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]
    return {r["mode"]: r for r in rows}


def compare_case(case):
    want, meta = load(case / "reference.safetensors")
    bench = bench_ms(case)
    torch_ms = float(meta["torch_ms"]) if "torch_ms" in meta else None
    rows = []
    for mode in MODES:
        row = {"weights": meta.get("weights_dtype", case.name), "mode": mode, "torch_ms": torch_ms,
               "torch_bf16_ms": float(meta["torch_bf16_ms"]) if "torch_bf16_ms" in meta else None}
        out = case / f"wgdit-{mode}.safetensors"
        if out.exists():
            got, _ = load(out)
            if got.shape != want.shape:
                row["error"] = f"shape {got.shape} != reference {want.shape}"
            else:
                row["rel_l2"] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
                row["max_abs"] = float(np.abs(got - want).max())
                row["nonfinite"] = int((~np.isfinite(got)).sum())
        else:
            row["error"] = f"{out.name} missing (wgdit forward failed?)"
        b = bench.get(mode, {})
        row["wgdit_ms"] = b.get("forward_ms")
        row["dispatches"] = b.get("dispatches_per_step")
        if row["wgdit_ms"] is not None and torch_ms:
            row["ratio"] = row["wgdit_ms"] / torch_ms
        rows.append(row)
    return meta, float(np.abs(want).max()), rows


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(cases):
    lines = ["| weights | mode | rel-L2 | max-abs | wgdit ms | PyTorch ms | wgdit/PyTorch | dispatches |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for _, _, rows in cases:
        for r in rows:
            err = (f"{r['rel_l2']:.2e} | {r['max_abs']:.2e}" if "rel_l2" in r else f"{r['error']} | -")
            if r.get("nonfinite"):
                err += f" ({r['nonfinite']} non-finite)"
            lines.append(f"| {r['weights']} | {r['mode']} | {err} | {fmt(r['wgdit_ms'], '.2f')} | "
                         f"{fmt(r['torch_ms'], '.2f')} | {fmt(r.get('ratio'), '.2f')} | {fmt(r['dispatches'], 'd')} |")
    return "\n".join(lines)


def notes(cases):
    out = []
    for meta, ref_max, rows in cases:
        w = rows[0]["weights"]
        line = (f"{w}: reference on {meta.get('device', '?')} (torch {meta.get('torch', '?')}, diffusers "
                f"{meta.get('diffusers', '?')}, {meta.get('torch_compute', 'float32')} compute, mean of "
                f"{meta.get('runs', '?')} after {meta.get('warmup', '?')} warm-up), max |reference| {ref_max:.3g}")
        if rows[0]["torch_bf16_ms"] is not None:
            line += f"; PyTorch with native bf16 weights and activations: {rows[0]['torch_bf16_ms']:.2f} ms"
        out.append(line)
    if cases:
        out.append(f"config: {cases[0][0].get('config', '?')}; S_img {cases[0][0].get('s_img', '?')}, "
                   f"S_txt {cases[0][0].get('s_txt', '?')}, masked text tokens {cases[0][0].get('pad_text', '0')}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="+", type=Path, help="WORK/<dtype> folders")
    ap.add_argument("--max-rel-l2", type=float, default=1e-4)
    ap.add_argument("--json", type=Path, help="also write every row as JSON here")
    a = ap.parse_args()
    cases = [compare_case(c) for c in a.cases]
    print(table(cases))
    print()
    print(notes(cases))
    if a.json:
        a.json.write_text(json.dumps([{"meta": m, "rows": r} for m, _, r in cases], indent=1))
    bad = [f"{r['weights']}/{r['mode']}: " + (f"rel-L2 {r['rel_l2']:.3e}" if "rel_l2" in r else r["error"])
           for _, _, rows in cases for r in rows
           if "rel_l2" not in r or not r["rel_l2"] <= a.max_rel_l2 or r.get("nonfinite")]
    if bad:
        print(f"\nFAIL (rel-L2 limit {a.max_rel_l2:g}): " + "; ".join(bad))
        sys.exit(1)
    print(f"\nall modes within rel-L2 {a.max_rel_l2:g}")


if __name__ == "__main__":
    main()
