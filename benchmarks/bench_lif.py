"""Benchmark the multi-step LIF implementations on CPU.

Rows: the plain-autograd reference (``backend="torch"``), the fused C++ kernel (``backend="cpp"``), the reference
compiled with ``torch.compile`` (inductor; skip with ``--no-compile``) and SpikingJelly 2.0's
``LIFNode(tau=2., detach_reset=True, step_mode='m')`` if it is installed
(``pip install --no-deps spikingjelly`` plus ``scipy loguru h5py``). Every row is measured in the same process,
the ratio column is SpikingJelly's time divided by the row's time (higher is faster), and each row's spikes are
checked against the reference.

    .venv/bin/python benchmarks/bench_lif.py [--shape 4 2097152] [--repeats 9] [--threads 2] [--no-compile]

Times are medians over ``--repeats`` runs after two warm-up runs. "fwd" runs under ``torch.no_grad()``;
"fwd+bwd" runs the forward with ``x.requires_grad_()`` and backpropagates a fixed random upstream gradient
(``x.grad`` is cleared before each run so no accumulation is timed).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def _median_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _methods(use_compile: bool):
    from spikedriven.kernels import available_backends, lif_multistep, lif_reference

    methods = {"reference (torch)": lambda x: lif_reference(x, 1.0, 2.0, 4.0)}
    if available_backends()["cpp"]:
        methods["fused cpp"] = lambda x: lif_multistep(x, backend="cpp")
    if use_compile:
        compiled = torch.compile(lif_reference, dynamic=False)
        methods["torch.compile(reference)"] = lambda x: compiled(x, 1.0, 2.0, 4.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from spikingjelly.activation_based import neuron

        node = neuron.LIFNode(tau=2.0, detach_reset=True, step_mode="m")

        def sj(x):
            node.reset()
            return node(x)

        methods["spikingjelly 2.0 LIFNode"] = sj
    except Exception as exc:  # not installed
        print(f"(spikingjelly not available: {type(exc).__name__}: {exc})")
    return methods


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs="+", default=[4, 16 * 512 * 16 * 16])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (compiles take a while)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods = _methods(not args.no_compile)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, shape {args.shape}")
    base = torch.randn(*args.shape) * 1.5
    header = f"{'dtype':9} {'method':26} {'fwd ms':>9} {'fwd+bwd ms':>11} {'SJ/fwd':>7} {'SJ/fwd+bwd':>11}  spikes==ref"
    for dtype in (torch.float32, torch.bfloat16):
        x0 = base.to(dtype)
        grad = torch.randn_like(x0)
        ref_spikes = methods["reference (torch)"](x0)
        rows = {}
        for name, fn in methods.items():
            xr = x0.clone().requires_grad_()

            def fwd():
                with torch.no_grad():
                    return fn(x0)

            def fwd_bwd():
                xr.grad = None
                fn(xr).backward(grad)

            t_compile = time.perf_counter()
            same = torch.equal(fwd(), ref_spikes)  # also triggers compilation / extension build
            fwd_bwd()
            t_compile = time.perf_counter() - t_compile
            rows[name] = (_median_ms(fwd, args.repeats), _median_ms(fwd_bwd, args.repeats), same, t_compile)
        sj = rows.get("spikingjelly 2.0 LIFNode")
        print()
        print(header)
        for name, (tf, tfb, same, tc) in rows.items():
            rf = f"{sj[0] / tf:7.2f}" if sj else f"{'-':>7}"
            rfb = f"{sj[1] / tfb:11.2f}" if sj else f"{'-':>11}"
            note = f"  (first call {tc:.1f} s)" if tc > 5 else ""
            print(f"{str(dtype).replace('torch.', ''):9} {name:26} {tf:9.2f} {tfb:11.2f} {rf} {rfb}  {same}{note}")


if __name__ == "__main__":
    main()
