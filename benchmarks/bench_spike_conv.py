"""The event engine's C++ spike convolutions alone: ``sparse_conv2d`` (V2 / V3, weights in 64-column blocks) and
``sparse_conv3x3`` (V1, ``w[Cin, 3, 3, Cout]``) on random CSR spike maps of the shapes the Fashion-MNIST V2 model and
V1-sized layers run, one thread, best of 7 repeats of ``--reps`` calls.

    python benchmarks/bench_spike_conv.py              # ~20 s
    git stash; python benchmarks/bench_spike_conv.py; git stash pop    # the same shapes on your previous build

Use it to compare kernel versions on one machine (the C++ build is keyed by its sources, so each version compiles
once). Prints microseconds per call and ns per added weight row (64 columns).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

V2_SHAPES = (  # batch, grid side, Cin, Cout, input rate: the trained sdt_v2_fmnist_8_64's heaviest spike convs
    (16, 7, 64, 192, 0.22), (16, 7, 80, 240, 0.18), (16, 14, 16, 64, 0.15), (16, 7, 64, 64, 0.05), (16, 14, 8, 16, 0.25))
V1_SHAPES = ((32, 7, 128, 0.15), (32, 14, 64, 0.15), (32, 7, 256, 0.1))  # T*B rows, grid side, channels, input rate


def random_csr(rng, rows: int, cin: int, rate: float):
    spikes = rng.random((rows, cin)) < rate
    # a stable sort of "not spiking" puts each row's active channels first, ascending: padded CSR
    idx = np.argsort(~spikes, axis=1, kind="stable").astype(np.int32)
    return idx, spikes.sum(1).astype(np.int32)


def best_seconds(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50, help="calls per repeat (default: 50)")
    ap.add_argument("--threads", type=int, default=1, help="kernel threads (default: 1)")
    a = ap.parse_args(argv)
    from spikedriven.engine.compiler_v2 import block_weights
    from spikedriven.engine.cpp_kernels import CppKernels

    K = CppKernels(a.threads)
    rng = np.random.default_rng(0)
    none = np.empty((0, 0), np.float32)
    for nb, side, cin, cout, rate in V2_SHAPES:
        idx, cnt = random_csr(rng, nb * side * side, cin, rate)
        wb = block_weights(rng.standard_normal((cin, 3, 3, cout)).astype(np.float32))
        b = np.zeros(cout, np.float32)
        out, acc = np.empty((nb * side * side, cout), np.float32), np.empty(nb * side, np.int64)
        t = best_seconds(lambda: K.sparse_conv2d(idx, cnt, nb, side, side, 1, 1, wb, b, none, out, acc), a.reps)
        rows = acc.sum() / 64
        print(f"sparse_conv2d  B={nb} {side}x{side} {cin:3d} -> {cout:3d} rate {rate:.2f}: {1e6 * t:7.0f} us "
              f"({1e9 * t / rows:.2f} ns per 64-column row)")
    for nb, side, c, rate in V1_SHAPES:
        idx, cnt = random_csr(rng, nb * side * side, c, rate)
        w = rng.standard_normal((c, 3, 3, c)).astype(np.float32)
        b = np.zeros(c, np.float32)
        out, acc = np.empty((nb * side * side, c), np.float32), np.empty(nb * side, np.int64)
        t = best_seconds(lambda: K.sparse_conv3x3(idx, cnt, nb, side, side, w, b, none, out, acc), a.reps)
        rows = acc.sum() / 64
        print(f"sparse_conv3x3 NB={nb} {side}x{side} {c:3d} -> {c:3d} rate {rate:.2f}: {1e6 * t:7.0f} us "
              f"({1e9 * t / rows:.2f} ns per 64-column row)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
