"""E-SpikeFormer (V3) on the event-driven engine vs our dense fp32 PyTorch path: agreement, batch-1 latency and
batch-16 throughput.

    python benchmarks/bench_engine_v3.py --reps 5                         # sdt_v3_digits_t, random BN statistics
    python benchmarks/bench_engine_v3.py --model sdt_v3_fmnist_t --threads 2

Dense = the integer model with BN folded (``prepare_inference``) under ``torch.inference_mode()``; engine =
``compile_model`` (cpp backend). Each input is timed on both paths back to back (order alternating, so both see the
same load on a shared machine); the speed-up is the median of the per-input ratios. Prints one line per batch size
and the agreement (``compare_with_model``: integer activations that differ, predictions, max |logit diff|).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from spikedriven.engine import compare_with_model, compile_model
from spikedriven.inference import prepare_inference


def paired_ms(dense, engine, inputs):
    out = []
    for i, x in enumerate(inputs):
        pair = {}
        for name in (("dense", "engine") if i % 2 == 0 else ("engine", "dense")):
            fn = dense if name == "dense" else engine
            t0 = time.perf_counter()
            fn(x)
            pair[name] = 1e3 * (time.perf_counter() - t0)
        out.append((pair["dense"], pair["engine"], pair["dense"] / pair["engine"]))
    return np.asarray(out)


def load(a):
    import spikedriven as sd

    torch.manual_seed(a.seed)
    m = sd.create_model(a.model)
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():  # random BN statistics: every neuron sees a spread of integers
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) * 0.7 - 0.1)
                mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    x = torch.randn(max(a.samples, 16 * a.reps), m.in_channels, m.img_size, m.img_size, generator=g)
    return m.eval(), x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sdt_v3_digits_t")
    p.add_argument("--reps", type=int, default=10, help="inputs timed per batch size (default: 10)")
    p.add_argument("--samples", type=int, default=32, help="images in the agreement check (default: 32)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, x = load(a)
    eng = compile_model(model, threads=a.threads, backend="cpp")
    dense = prepare_inference(model)
    ag = compare_with_model(model, eng, x[:a.samples])
    print(f"{a.model}: {ag.summary()}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with torch.inference_mode():
        for B in (1, 16):
            ins = [x[i * B:(i + 1) * B] for i in range(a.reps)]
            dense(ins[0]), eng.run(ins[0])  # warm-up
            r = paired_ms(lambda t: dense(t), lambda t: eng.run(t), ins)
            res = eng.run(ins[0])
            print(f"batch {B:2d}: dense {np.median(r[:, 0]):.2f} ms, engine {np.median(r[:, 1]):.2f} ms, speed-up "
                  f"(median of per-input ratios) {np.median(r[:, 2]):.2f}x; additions/img {res.total_sops / B:,.0f}, "
                  f"MACs/img {res.total_macs / B:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
