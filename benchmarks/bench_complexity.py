"""RQ5: time and memory of SDSA vs vanilla softmax self-attention (and Spikformer's SSA) as N and D grow.

The operators are the model's own (``MS_SSA_Conv.attention`` with attn_mode "sdsa" / "softmax" / "ssa"), called on
binary spike tensors Q, K, V of shape [T, B, heads, N, D/heads] (Bernoulli, rate 0.14). Two sweeps:
N (tokens) at fixed D, and D (channels) at fixed N. For each point: the minimum wall time over repeats (single-
threaded by default, robust to other load) and the peak memory the operator allocates beyond its inputs (tracked per
tensor storage with a dispatch mode, so it is the CPU allocator's live bytes, not RSS). Log-log slopes are fitted
with numpy.polyfit: for softmax/ssa on the points at or above the sweep's median size, for SDSA on the points whose
spike tensors are >= --dram-mib (beyond the last-level cache; below it a fixed per-call overhead and the cache-to-
DRAM transition shape the curve, not the complexity).

    SPIKEDRIVEN_LIF_BACKEND=torch python benchmarks/bench_complexity.py [--out bench_complexity.png] [--quick]

Targets (issue RQ5): SDSA slope <= 1.1 in N and in D; vanilla's N slope near 2.
"""
from __future__ import annotations

import argparse
import os
import time
import weakref

os.environ.setdefault("SPIKEDRIVEN_LIF_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from spikedriven.layers import MS_SSA_Conv  # noqa: E402


class PeakMemory(TorchDispatchMode):
    """Live bytes of tensor storages created inside the mode (views share their base's storage)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list] = {}  # storage ptr -> [alias count, nbytes]

    def _release(self, key):
        ent = self._refs.get(key)
        if ent is None:
            return
        ent[0] -= 1
        if ent[0] == 0:
            self.live -= ent[1]
            del self._refs[key]

    def _track(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in self._refs:
            self._refs[key][0] += 1
        else:
            self._refs[key] = [1, st.nbytes()]
            self.live += st.nbytes()
            self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            self._track(t)
        return out


def steady_allocator() -> bool:
    """Keep freed blocks in the heap (glibc): otherwise every call of a multi-MiB operator may get fresh mmap'd
    pages and pay page faults or not depending on the allocator's history, which shows up as jumps in the
    timings that have nothing to do with the operator (a GPU's caching allocator behaves like this setting)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        # no mmap'd chunks at all, and never give the heap's top back to the OS
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def spikes(shape, rate, gen):
    return (torch.rand(shape, generator=gen) < rate).float()


@torch.no_grad()
def measure(mode: str, N: int, D: int, T: int, heads: int, rate: float, min_time: float, reps_max: int):
    # attention() only uses the parameter-free parts (masks, sums, neurons, matmuls): build the module at the
    # smallest width so that no D x D projection weights are allocated.
    attn = MS_SSA_Conv(heads, heads, attn_mode=mode).eval()
    gen = torch.Generator().manual_seed(0)
    shape = (T, 1, heads, N, D // heads)
    q, k, v = (spikes(shape, rate, gen) for _ in range(3))
    attn.attention(q, k, v)  # warm-up
    times = []
    for _ in range(3):  # rounds a moment apart: a burst of other load on the machine need not hit all of them
        t_start = time.perf_counter()
        n = 0
        while n < 3 or (time.perf_counter() - t_start < min_time / 3 and n < reps_max):
            t0 = time.perf_counter()
            attn.attention(q, k, v)
            times.append(time.perf_counter() - t0)
            n += 1
        time.sleep(0.05)
    pm = PeakMemory()
    with pm:
        y = attn.attention(q, k, v)
    del y
    return min(times), pm.peak  # min: least disturbed by other processes


def slope(xs, ys, keep=None):
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = xs >= np.median(xs) if keep is None else np.asarray(keep, bool)
    if keep.sum() < 2:
        keep = np.ones_like(xs, bool)
    return float(np.polyfit(np.log(xs[keep]), np.log(ys[keep]), 1)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_complexity.png")
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0.14)
    ap.add_argument("--Ns", default="128,256,512,1024,2048,4096,8192,16384,32768",
                    help="token counts (D fixed at --D)")
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--Ds", default="128,256,512,1024,2048,4096,8192,16384,32768",
                    help="channel counts (N fixed at --N)")
    ap.add_argument("--max-quadratic-N", type=int, default=2048,
                    help="largest N for the N^2 operators (softmax, ssa): 4 x 8 heads x N^2 floats each")
    ap.add_argument("--max-quadratic-D", type=int, default=4096, help="largest D for softmax / ssa")
    ap.add_argument("--dram-mib", type=float, default=16.0,
                    help="SDSA slopes are fitted on points whose spike tensors are at least this large (MiB), "
                         "i.e. well beyond the last-level cache: below it, fixed per-call overhead and the "
                         "cache-to-DRAM transition, not the operator's complexity, shape the curve")
    ap.add_argument("--N", type=int, default=256)
    ap.add_argument("--modes", default="sdsa,softmax,ssa")
    ap.add_argument("--min-time", type=float, default=0.4, help="seconds of timing per point")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: robust against other load on the machine)")
    ap.add_argument("--quick", action="store_true", help="smaller sweeps (CI smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.Ns, args.Ds, args.min_time = "64,128,256,512", "64,128,256,512", 0.1
    Ns = [int(s) for s in args.Ns.split(",")]
    Ds = [int(s) for s in args.Ds.split(",")]
    modes = args.modes.split(",")
    torch.set_num_threads(args.threads)
    steady = steady_allocator()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.T}, heads={args.heads}, "
          f"spike rate {args.rate}, LIF backend {os.environ['SPIKEDRIVEN_LIF_BACKEND']}, "
          f"steady allocator {'on' if steady else 'unavailable'}")
    t_all = time.perf_counter()
    res = {}
    for sweep, xs in (("N", Ns), ("D", Ds)):
        print(f"\nsweep over {sweep} ({'D' if sweep == 'N' else 'N'} = {args.D if sweep == 'N' else args.N}):")
        print(f"  {sweep:>6s}" + "".join(f"  {m + ' ms':>12s}  {m + ' MiB':>12s}" for m in modes))
        for x in xs:
            N, D = (x, args.D) if sweep == "N" else (args.N, x)
            row = []
            for m in modes:
                if m != "sdsa" and (N > args.max_quadratic_N or D > args.max_quadratic_D):
                    row.append(f"  {'-':>12s}  {'-':>12s}")
                    continue
                t, mem = measure(m, N, D, args.T, args.heads, args.rate, args.min_time, 50)
                res.setdefault((sweep, m), []).append((x, t, mem))
                row.append(f"  {t * 1e3:12.3f}  {mem / 2**20:12.3f}")
            print(f"  {x:6d}" + "".join(row), flush=True)
    def fit_mask(sweep, m, pts):
        if m != "sdsa":
            return None  # points at or above the median size
        other = args.D if sweep == "N" else args.N
        return [args.T * p[0] * other * 4 / 2**20 >= args.dram_mib for p in pts]

    print(f"\nfitted log-log slopes (sdsa: points with spike tensors >= {args.dram_mib:g} MiB; "
          f"softmax/ssa: points at or above their median size):")
    print(f"  {'operator':10s} {'time~N':>8s} {'time~D':>8s} {'mem~N':>8s} {'mem~D':>8s}")
    slopes = {}
    for m in modes:
        s = []
        for sweep in ("N", "D"):
            pts = res[(sweep, m)]
            s.append(slope([p[0] for p in pts], [p[1] for p in pts], fit_mask(sweep, m, pts)))
        for sweep in ("N", "D"):
            pts = res[(sweep, m)]
            s.append(slope([p[0] for p in pts], [p[2] for p in pts], fit_mask(sweep, m, pts)))
        slopes[m] = s
        print(f"  {m:10s} {s[0]:8.2f} {s[1]:8.2f} {s[2]:8.2f} {s[3]:8.2f}")
    if "sdsa" in slopes:
        ok = slopes["sdsa"][0] <= 1.1 and slopes["sdsa"][1] <= 1.1
        print(f"\nSDSA time slopes <= 1.1 in N and D: {'YES' if ok else 'NO'}")
    if "softmax" in slopes:
        print(f"vanilla softmax attention time slope in N: {slopes['softmax'][0]:.2f} (quadratic = 2)")
    print(f"total benchmark time {time.perf_counter() - t_all:.1f} s; load average now "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs (other load inflates "
          f"the memory-bound large points)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for col, sweep in enumerate(("N", "D")):
        for row, (idx, label, scale) in enumerate(((1, "time per call (ms)", 1e3), (2, "peak extra memory (MiB)",
                                                                                      2**-20))):
            ax = axes[row, col]
            for m in modes:
                pts = res[(sweep, m)]
                sl = slopes[m][col + 2 * row]
                ax.loglog([p[0] for p in pts], [p[idx] * scale for p in pts], "o-", label=f"{m} (slope {sl:.2f})")
            ax.set_xlabel(f"{sweep} ({'tokens' if sweep == 'N' else 'channels'}), "
                          f"{'D' if sweep == 'N' else 'N'}={args.D if sweep == 'N' else args.N}")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"SDSA vs vanilla self-attention: T={args.T}, heads={args.heads}, binary spikes at rate {args.rate}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return slopes


if __name__ == "__main__":
    main()
