"""torch.compile (inductor) against eager, per family, training and evaluation, in one process.

    python benchmarks/bench_compile.py                       # the three digits-size models, fp32, 2 threads
    python benchmarks/bench_compile.py --models sdt_v3_fmnist_t --batch 64

For each model: eager and ``torch.compile(model)`` with the same weights and batch. Training: forward +
cross-entropy + backward + AdamW step (each side its own copy of the model and optimizer); evaluation: the
``prepare_inference`` form under ``inference_mode`` (``compile=True`` for the compiled side). Printed per model:
compile time (first call), steady img/s of both (best of ``--steps`` after two warm-up steps), the ratio, and the
largest logit difference (evaluation) and loss difference (first training step) between the two, which says
whether the compiled model is exact within float tolerance. A failing compile is reported, not hidden.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _best(fn, steps):
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", nargs="+", default=["sdt_digits_1_64", "sdt_v2_digits_8_64", "sdt_v3_digits_t"],
                    help="registered models (default: one small model per family)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps, the best counts (default: 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    a = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import spikedriven as sd
    from bench_vs_official import cpu_description
    from spikedriven.inference import prepare_inference

    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {a.threads} threads, batch {a.batch}")
    print("| model | mode | eager img/s | compiled img/s | × | first compiled call (s) | max diff |")
    print("|---|---|---|---|---|---|---|")
    for name in a.models:
        torch.manual_seed(0)
        base = sd.create_model(name)
        x = torch.rand(a.batch, base.in_channels, base.img_size, base.img_size)
        y = torch.randint(0, base.num_classes, (a.batch,))
        # training
        res = {}
        for mode in ("eager", "compiled"):
            m = copy.deepcopy(base).train()
            run = torch.compile(m) if mode == "compiled" else m
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
            losses = []

            def step():
                loss = F.cross_entropy(run(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss))

            try:
                t = time.perf_counter()
                step()
                first = time.perf_counter() - t
                res[mode] = (a.batch / _best(step, a.steps), first, losses[0])
            except Exception as e:  # noqa: BLE001 - reported in the table
                res[mode] = (float("nan"), float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:80]}")
        e, c = res["eager"], res["compiled"]
        diff = abs(e[2] - c[2]) if isinstance(c[2], float) else c[2]
        print(f"| {name} | train | {e[0]:.1f} | {c[0]:.1f} | {c[0] / e[0]:.2f} | {c[1]:.1f} | loss {diff if isinstance(diff, str) else f'{diff:.1e}'} |",
              flush=True)
        # evaluation
        base.eval()
        with torch.inference_mode():
            outs, res = {}, {}
            for mode in ("eager", "compiled"):
                try:
                    run = prepare_inference(base, compile=mode == "compiled")
                    t = time.perf_counter()
                    outs[mode] = run(x)
                    first = time.perf_counter() - t
                    res[mode] = (a.batch / _best(lambda: run(x), a.steps), first)
                except Exception as ex:  # noqa: BLE001
                    res[mode] = (float("nan"), float("nan"))
                    outs[mode] = f"{type(ex).__name__}: {str(ex).splitlines()[0][:80]}"
            e, c = res["eager"], res["compiled"]
            d = outs["compiled"] if isinstance(outs["compiled"], str) else \
                f"logits {float((outs['compiled'] - outs['eager']).abs().max()):.1e}"
            print(f"| {name} | eval | {e[0]:.1f} | {c[0]:.1f} | {c[0] / e[0]:.2f} | {c[1]:.1f} | {d} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
