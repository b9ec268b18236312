"""Training / evaluation throughput, peak memory and roofline fraction of SDT models on this machine.

Each (model, path) pair runs in a fresh subprocess so that peak memory is its own. Paths:
  reference   plain-autograd LIF loop, NCHW, fp32: the same computation as the official code's SpikingJelly
              torch backend (the official code cannot use its cupy backend without a GPU)
  fast        fused LIF kernel + channels_last, fp32
  fast-bf16   fast + bf16 autocast (neuron state stays fp32)
Evaluation additionally folds BN into the convs and runs under torch.inference_mode.
The fp32 / bf16 GEMM peak is measured in the same run, and FLOPs per image are counted from the actual conv /
linear calls (forward = 2 x MACs; training = 3 x forward).

    python benchmarks/bench_throughput.py                      # all three configs, all paths
    python benchmarks/bench_throughput.py --configs cifar_2_512 --paths reference fast --steps 3
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

CONFIGS = {
    "cifar_2_256": dict(name="sdt_cifar10_2_256", batch=16, size=32, event=False),
    "cifar_2_512": dict(name="sdt_cifar10_2_512", batch=16, size=32, event=False),
    "gesture_2_256": dict(name="sdt_gesture_2_256_t16", batch=2, size=128, event=True),
    "fmnist_1_128": dict(name="sdt_fmnist_1_128", batch=64, size=28, event=False),  # the Fashion-MNIST recipe
    # V2 (Meta-SpikeFormer): a CIFAR-sized one (dims 32/64/128/160, T=4, 16x16 then 8x8 tokens) and the official
    # 8-512 at 64 px (its layer structure, scaled-down input for a CPU)
    "v2_cifar_32": dict(name="sdt_v2_8_512", batch=16, size=32, event=False,
                        kwargs=dict(img_size=32, num_classes=10, embed_dim=(32, 64, 128, 160), num_heads=2,
                                    downsample_strides=(2, 1, 2, 1, 1), T=4)),
    "v2_8_512_64px": dict(name="sdt_v2_8_512", batch=8, size=64, event=False, kwargs=dict(img_size=64, T=1)),
}
PATHS = ("reference", "fast", "fast-bf16")


def gemm_peak(dtype_name: str, reps: int = 5) -> float:
    """Best GEMM rate over a few square sizes and trials (GFLOP/s): the roofline every ratio is taken against."""
    import torch

    dtype = getattr(torch, dtype_name)
    best = 0.0
    for n in (1024, 2048, 3072, 4096):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        for _ in range(2):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def count_flops(model, x) -> float:
    """Forward FLOPs (2 x multiply-accumulates) of every conv/linear call, per forward of ``x``."""
    import torch
    from torch import nn

    total = [0.0]

    def hook(m, args, out):
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            k = math.prod(m.kernel_size) * m.in_channels // m.groups
            total[0] += 2.0 * out.numel() * k
        else:
            total[0] += 2.0 * out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total[0]


def run_one(cfg_key: str, path: str, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    import spikedriven as sd
    from spikedriven.inference import prepare_inference

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = CONFIGS[cfg_key]
    fast = path != "reference"
    model = sd.create_model(cfg["name"], channels_last=fast, lif_backend="auto" if fast else "torch",
                            compact_spikes=fast, **cfg.get("kwargs", {}))
    B, S = cfg["batch"], cfg["size"]
    if cfg["event"]:
        x = torch.poisson(torch.full((B, model.T, 2, S, S), 0.2))
    else:
        x = torch.randn(B, model.in_channels, S, S)
    y = torch.randint(0, model.num_classes, (B,))
    flops_fwd = count_flops(model, x) / B
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = path == "fast-bf16"

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_step()  # warm-up (kernel compilation, allocator)
    t = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_dt = (time.perf_counter() - t) / steps
    peak_train_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    model.eval()
    infer = prepare_inference(model) if fast else model
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        infer(x)
        t = time.perf_counter()
        for _ in range(steps):
            infer(x)
        eval_dt = (time.perf_counter() - t) / steps
    return dict(config=cfg_key, path=path, threads=threads, batch=B, train_img_s=B / train_dt,
                eval_img_s=B / eval_dt, peak_rss_mb=peak_train_mb, rss_before_mb=rss0 / 1024,
                gflop_fwd_per_img=flops_fwd / 1e9)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write all rows to this file")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(args._child[0], args._child[1], args.steps, args.threads)))
        return

    import torch

    torch.set_num_threads(args.threads)
    # bf16 peak only when a bf16 path runs: without native bf16 (AVX2-only CPUs) the 4096^3 bf16 GEMMs are emulated
    # and took >10 minutes on a 2-core AMD EPYC
    peak32 = gemm_peak("float32")
    peak16 = gemm_peak("bfloat16") if "fast-bf16" in args.paths else float("nan")
    print(f"GEMM peak on this machine ({args.threads} threads): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s",
          flush=True)
    rows = []
    for c in args.configs:
        for p in args.paths:
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--threads",
                                  str(args.threads), "--_child", c, p], capture_output=True, text=True,
                                 env={**os.environ})
            if out.returncode:
                print(f"{c} {p}: FAILED\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            peak = peak16 if p == "fast-bf16" else peak32
            r["train_roofline"] = r["train_img_s"] * 3 * r["gflop_fwd_per_img"] / peak
            r["eval_roofline"] = r["eval_img_s"] * r["gflop_fwd_per_img"] / peak
            r["train_roofline_fp32"] = r["train_img_s"] * 3 * r["gflop_fwd_per_img"] / peak32
            r["eval_roofline_fp32"] = r["eval_img_s"] * r["gflop_fwd_per_img"] / peak32
            rows.append(r)
            print(f"{c:14s} {p:10s} train {r['train_img_s']:7.2f} img/s ({r['train_roofline']:5.1%} of its roofline)"
                  f"  eval {r['eval_img_s']:7.2f} img/s ({r['eval_roofline']:5.1%})  peak RSS {r['peak_rss_mb']:6.0f} MB (before 1st step {r['rss_before_mb']:.0f})"
                  f"  fwd {r['gflop_fwd_per_img']:.2f} GFLOP/img", flush=True)
    by = {(r["config"], r["path"]): r for r in rows}
    print("\nratios vs the reference path (same run):")
    for c in args.configs:
        ref = by.get((c, "reference"))
        if not ref:
            continue
        for p in args.paths:
            r = by.get((c, p))
            if r and p != "reference":
                print(f"  {c:14s} {p:10s} train x{r['train_img_s'] / ref['train_img_s']:.2f}  "
                      f"eval x{r['eval_img_s'] / ref['eval_img_s']:.2f}  "
                      f"peak memory {r['peak_rss_mb'] / ref['peak_rss_mb']:.0%} of reference")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gemm_fp32=peak32, gemm_bf16=peak16, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
