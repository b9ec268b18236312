"""Where one training step's time goes: torch.profiler over a forward + cross-entropy + backward + AdamW step.

    python benchmarks/profile_step.py --config v2_cifar_32            # V2, dims 32/64/128/160, 32 px, T=4, B=16
    python benchmarks/profile_step.py --config v2_8_384_64px --amp    # bf16 autocast
    python benchmarks/profile_step.py --config v3_s_64px --by-shape   # ops grouped by input shapes

Configurations are those of ``bench_vs_official.py`` (same models, batch and image size). Prints the training
img/s (best of ``--steps`` steps after ``--warmup`` steps), how much of the machine's matrix-product peak that is
(the step's convolution and matrix-product FLOPs, forward + backward, as ``torch.utils.flop_counter`` counts them,
per second of the best step, against the best of a few 2048 x 2048 ``torch.mm`` at the same threads and precision),
then the ops with the most self CPU time in one profiled step, and the share of the step spent in convolutions
(forward + backward), the optimizer and the neurons.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = {  # share of the step: op-name prefixes
    "convolutions": ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::convolution",
                     "aten::_convolution", "aten::conv2d", "aten::conv1d", "aten::mm", "aten::addmm"),
    "optimizer": ("Optimizer.step",),
    "neurons": ("spikedriven_lif::", "spikedriven_int::"),
    "batch norm": ("aten::native_batch_norm",),
    "copies": ("aten::copy_",),
}


def gemm_peak(dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of the best of ``reps`` n x n x n ``torch.mm`` at the current thread count."""
    import torch

    a = torch.rand(n, n).to(dtype)
    b = torch.rand(n, n).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN / BLAS set-up)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    from bench_vs_official import CONFIGS

    ap.add_argument("--config", choices=sorted(CONFIGS), default="v2_cifar_32",
                    help="model and input, as in bench_vs_official.py (default: v2_cifar_32)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps, the best counts (default: 3)")
    ap.add_argument("--rows", type=int, default=20, help="ops listed (default: 20)")
    ap.add_argument("--by-shape", action="store_true", help="group ops by their input shapes")
    a = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import spikedriven as sd
    from bench_vs_official import cpu_description

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = CONFIGS[a.config]
    (name, kw), B, size = cfg["ours"], cfg["batch"], cfg["size"]
    model = sd.create_model(name, **kw).train()
    x = torch.rand(B, 3, size, size)
    y = torch.randint(0, model.num_classes, (B,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp):
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {a.threads} threads")
    print(f"{a.config} ({name}, B={B}, {size} px) {'bf16 autocast' if a.amp else 'fp32'}: "
          f"train {B / min(times):.1f} img/s (best of {a.steps} steps after {a.warmup})")
    peak = gemm_peak(torch.bfloat16 if a.amp else torch.float32)
    achieved = flops / min(times)
    print(f"conv + matmul work: {flops / 1e9:.2f} GFLOP per step (forward + backward), {achieved / 1e9:.1f} GFLOP/s = "
          f"{100 * achieved / peak:.0f}% of the {'bf16' if a.amp else 'fp32'} matrix-product peak here "
          f"({peak / 1e9:.1f} GFLOP/s: best 2048 x 2048 torch.mm)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=a.by_shape) as prof:
        step()
    events = prof.key_averages(group_by_input_shape=a.by_shape)
    total = sum(e.self_cpu_time_total for e in events)
    shares = {g: sum(e.self_cpu_time_total for e in events if e.key.startswith(p)) / total
              for g, p in GROUPS.items()}
    # the optimizer's own ops are children of "Optimizer.step": count its total, not only its self time
    opt_total = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
    shares["optimizer"] = opt_total / total
    print(f"profiled step: {total / 1e3:.1f} ms of self CPU time; " +
          ", ".join(f"{g} {100 * s:.0f}%" for g, s in shares.items()))
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:a.rows]
    for e in rows:
        shape = f"  {str(e.input_shapes)[:90]}" if a.by_shape else ""
        print(f"  {e.self_cpu_time_total / 1e3:8.2f} ms  {100 * e.self_cpu_time_total / total:5.1f}%  "
              f"x{e.count:<5d} {e.key}{shape}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KMP_WARNINGS", "0")
    raise SystemExit(main())
