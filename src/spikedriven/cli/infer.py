"""``spikedriven infer``: run a model with the event-driven engine (or the dense PyTorch path) on data.

Inputs are prepared by ``spikedriven.training.inputs``: exactly as the model's recipe prepared its evaluation data
(from the checkpoint, ``--config`` or the registered model), or refused when nothing says how.
"""
from __future__ import annotations

import time

from .common import add_model_arguments, model_from_args, nonneg_int, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "infer", help="inference with the event-driven engine (sparse additions) or the dense PyTorch model",
        description="Predict classes for a dataset's test split, image files or an event .npz. Inputs are prepared "
                    "with the recipe the model was trained with (stored in `spikedriven train` checkpoints; else "
                    "--config, else the registered model's recipe); without one, only --data random and model-ready "
                    ".npz frames are accepted. With --engine events, prints the accumulations performed per layer "
                    "(measured SOPs) next to the energy report's T x rate x FLOPs.")
    add_model_arguments(p)
    p.add_argument("--engine", choices=["events", "dense"], default="events",
                   help="events: the event-driven engine (CPU); dense: the PyTorch model, BN folded, each V2 RepConv in its "
                        "form with fewer MACs (default: events)")
    p.add_argument("--data", default="random",
                   help="a dataset name (digits, fashion-mnist, cifar10, gesture, ...: its test split), random, image "
                        "file(s) (comma-separated) or a folder of images, or an .npz of frames ([T,C,H,W] or "
                        "[B,T,C,H,W], optional 'labels') (default: random)")
    p.add_argument("--limit", type=nonneg_int, default=256,
                   help="samples from a dataset (a fixed random subset; 0 = all) or random inputs (default: 256)")
    p.add_argument("--data-dir", help="dataset folder for --data NAME (default: the recipe's, else the dataset's usual "
                                      "location)")
    p.add_argument("--batch", type=positive_int, default=64, help="batch size (default: 64)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--compile", action="store_true",
                   help="dense engine: torch.compile the inference form (first batch compiles for 10-30 s; measured "
                        "1.66x on sdt_v3_digits_t, 0.86-1.07x on V1/V2: BENCHMARKS.md §8)")
    p.add_argument("--engine-backend", choices=["auto", "cpp", "numba"], default="auto",
                   help="kernels of the event engine: C++ (compiled on first use) or numba; same results "
                        "(default: auto = cpp if it builds)")
    p.add_argument("--show", type=nonneg_int, default=10, help="print the first N predictions (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset / random inputs (default: 0)")
    p.set_defaults(func=run)


def load_data(args, model, meta):
    """``(x, y or None, description)`` for ``--data``, prepared like the model's evaluation data."""
    from pathlib import Path

    from ..data.info import DATASET_INFO, canonical_name
    from ..training.inputs import (dataset_inputs, event_inputs, image_inputs, path_inputs, random_inputs,
                                   recipe_for_model, with_dataset)

    r, src = recipe_for_model(model, meta, getattr(args, "config", None))
    d = args.data
    if d == "random":
        x, desc = random_inputs(model, args.limit or 16, args.seed)
        return x, None, desc
    if d.endswith(".npz") and Path(d).is_file():
        return event_inputs(d, model, r)
    if canonical_name(d) in DATASET_INFO and not Path(d).exists():
        if r is None:
            raise ValueError(f"--data {d}: {src}")
        x, y, desc = dataset_inputs(with_dataset(r, canonical_name(d), args.data_dir, head=model.num_classes),
                                   args.limit or None, args.seed)
        return x, y, f"{desc}, prepared by {src}"
    paths = path_inputs(d)
    if r is None:
        raise ValueError(f"--data {d}: {src}")
    x, desc = image_inputs(r, paths)
    return x, None, f"{desc}, prepared by {src}"


# ------------------------------------------------------------------ command
def run(args) -> int:
    import numpy as np
    import torch

    model, meta = model_from_args(args)
    model.eval()
    x, y, desc = load_data(args, model, meta)
    n = len(x)
    t0 = time.perf_counter()
    counts: dict = {}
    if args.engine == "events":
        from ..engine import compile_model

        eng = compile_model(model, threads=args.threads, backend=args.engine_backend)
        eng.run(x[:1])  # JIT warm-up (cached after the first process)
        t0 = time.perf_counter()
        preds = []
        for i in range(0, n, args.batch):
            res = eng.run(x[i:i + args.batch])
            preds.append(res.predictions)
            for c in res.counts:
                a = counts.setdefault(c.name, [c.kind, 0, 0, 0, 0])
                a[1] += max(c.active_inputs, 0)
                a[2] += c.input_neurons
                a[3] += c.acc
                a[4] += c.nominal
        preds = np.concatenate(preds)
    else:
        from ..inference import prepare_inference

        if args.threads:
            torch.set_num_threads(args.threads)
        m = prepare_inference(model, compile=args.compile)
        preds = []
        with torch.inference_mode():
            m(x[:args.batch])  # warm-up (and the compilation, with --compile) outside the timing
            t0 = time.perf_counter()
            for i in range(0, n, args.batch):
                lg = m(x[i:i + args.batch])
                preds.append((lg.mean(0) if lg.ndim == 3 else lg).argmax(-1).numpy())
        preds = np.concatenate(preds)
    dt = time.perf_counter() - t0
    print(f"{args.engine} engine on {desc}: {n} samples in {dt:.2f} s ({1e3 * dt / max(n, 1):.2f} ms/sample)")
    k = min(args.show, n)
    if k:
        print("predictions:", " ".join(map(str, preds[:k].tolist())) + (" ..." if n > k else ""))
    if y is not None:
        print(f"accuracy {float((preds == y[:n].numpy()).mean()):.4f} ({n} labelled samples)")
    if counts:
        print("per-layer work per sample ('performed': counted by the engine; 'nominal': the energy report's T x rate x "
              "FLOPs, incl. padding taps; docs/engine.md, counting rule):")
        print(f"  {'layer':34s} {'kind':5s} {'in-rate':>8s} {'performed':>14s} {'nominal':>14s}")
        tot = [0, 0]
        for name, (kind, act, neu, acc, nom) in counts.items():
            rate = f"{act / neu:.4f}" if kind == "sop" and neu else "-"
            print(f"  {name:34s} {kind:5s} {rate:>8s} {acc / n:14,.0f} {nom / n:14,.0f}")
            if kind == "sop":
                tot[0] += acc
                tot[1] += nom
        print(f"  {'total SOPs (additions)':34s} {'':5s} {'':>8s} {tot[0] / n:14,.0f} {tot[1] / n:14,.0f}")
    return 0
