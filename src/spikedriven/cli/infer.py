"""``spikedriven infer``: run a model with the event-driven engine (or the dense PyTorch path) on data."""
from __future__ import annotations

import gzip
import os
import time

import numpy as np

from .common import add_model_arguments, model_from_args

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


def register(sub) -> None:
    p = sub.add_parser(
        "infer", help="inference with the event-driven engine (sparse additions) or the dense PyTorch model",
        description="Predict classes for a dataset, images or an event .npz file. With --engine events, print the "
                    "accumulations performed per layer (measured SOPs) next to the energy report's T x rate x FLOPs.")
    add_model_arguments(p)
    p.add_argument("--engine", choices=["events", "dense"], default="events")
    p.add_argument("--data", default="random",
                   help="fashion-mnist | digits | random | image file(s)/folder | event .npz ([T,C,H,W] or "
                        "[B,T,C,H,W]) | any other dataset name (e.g. sim-fashion-mnist-dvs, gesture, cifar10): its "
                        "test split, preprocessed by the recipe stored in a `spikedriven train` checkpoint")
    p.add_argument("--limit", type=int, default=256, help="number of samples from a dataset (0 = all)")
    p.add_argument("--data-dir", help="dataset folder for --data NAME (default: the checkpoint's recipe)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (engine kernels / torch)")
    p.add_argument("--engine-backend", choices=["auto", "cpp", "numba"], default="auto",
                   help="kernels of the event engine: C++ (compiled on first use) or numba only; same results")
    p.add_argument("--mean", type=float, nargs="*",
                   help="normalisation mean (default: the training recipe's, else the dataset's, else 0.5)")
    p.add_argument("--std", type=float, nargs="*",
                   help="normalisation std (default: the training recipe's, else the dataset's, else 0.5)")
    p.add_argument("--show", type=int, default=10, help="print the first N predictions")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


# ------------------------------------------------------------------ model and data
def load_model(args):
    """Model from --config/--model, else from the checkpoint's ``model_kwargs``; and the checkpoint's metadata."""
    model, meta = model_from_args(args)
    return model.eval(), meta


def normalisation(meta, args) -> tuple[list[float], list[float], str]:
    """(mean, std, where from) for image inputs: --mean/--std, else what the model was trained with (the recipe in a
    `spikedriven train` checkpoint, or a ``preprocess`` entry), else the named dataset's statistics, else 0.5."""
    pre = meta.get("preprocess") if isinstance(meta.get("preprocess"), dict) else {}
    rec = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    from ..data.info import dataset_normalisation

    for mean, std, src in ((args.mean, args.std, "--mean/--std"), (pre.get("mean"), pre.get("std"), "checkpoint"),
                           (rec.get("mean"), rec.get("std"), "the run's recipe")):
        if mean or std:
            fallback = dataset_normalisation(rec.get("dataset") or args.data)
            mean, std = mean or fallback[0], std or fallback[1]
            break
    else:
        mean, std = dataset_normalisation(args.data)
        src = f"{args.data} statistics" if (mean, std) != (0.5, 0.5) else "default 0.5/0.5"
    as_list = lambda v: [float(u) for u in np.atleast_1d(np.asarray(v, np.float64))]  # noqa: E731
    return as_list(mean), as_list(std), src


def _norm(x, meta, args, desc):
    """Normalised images and their description, which says which mean/std was used and why."""
    mean, std, src = normalisation(meta, args)
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    fmt = lambda v: "/".join(f"{u:.4g}" for u in v)  # noqa: E731
    return ((x - m) / s).astype(np.float32), f"{desc}, normalised (x - {fmt(mean)}) / {fmt(std)} ({src})"


def _fit(x, size):
    """[N,C,h,w] in [0,1] -> [N,C,size,size]: zero-pad if smaller (centred), else resize."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if h <= size and w <= size:
        t, l = (size - h) // 2, (size - w) // 2
        out = np.zeros(x.shape[:-2] + (size, size), np.float32)
        out[..., t:t + h, l:l + w] = x
        return out
    return F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()


def load_data(args, model, meta):
    """Returns (inputs float32 array, labels or None, description)."""
    cin, size, T = model.in_channels, model.img_size, model.T
    lim = args.limit or None
    d = args.data
    if d == "fashion-mnist":
        root = next((r for r in FMNIST_DIRS if os.path.isdir(r)), None)
        if root is None:
            raise FileNotFoundError("Fashion-MNIST IDX files not found (apt-get install dataset-fashion-mnist)")
        with gzip.open(os.path.join(root, "t10k-images-idx3-ubyte.gz")) as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:lim]
        with gzip.open(os.path.join(root, "t10k-labels-idx1-ubyte.gz")) as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)[:lim].astype(np.int64)
        x = _fit(x.astype(np.float32) / 255.0, size)
        x, desc = _norm(np.repeat(x, cin, 1), meta, args, f"Fashion-MNIST test[:{len(y)}]")
        return x, y, desc
    if d == "digits":
        from sklearn.datasets import load_digits

        dg = load_digits()
        x = (dg.images[:, None].astype(np.float32) / 16.0)[:lim]
        y = dg.target[:lim].astype(np.int64)
        x = _fit(x, size)
        x, desc = _norm(np.repeat(x, cin, 1), meta, args, f"sklearn digits[:{len(y)}]")
        return x, y, desc
    if d == "random":
        g = np.random.default_rng(args.seed)
        n = lim or 16
        if cin == 2:
            return g.poisson(0.3, (n, T, cin, size, size)).astype(np.float32), None, f"random events x{n}"
        return g.standard_normal((n, cin, size, size)).astype(np.float32), None, f"random images x{n}"
    from ..data.info import DATASET_INFO, canonical_name

    if canonical_name(d) in DATASET_INFO and not os.path.exists(d):
        return _recipe_dataset(canonical_name(d), args, meta, lim)
    if d.endswith(".npz"):
        from ..data.events import read_frames_npz

        x, y = read_frames_npz(d, lim)  # checked: readable, not empty, finite, one label per sample
        return x, y, f"event frames {d} {x.shape}"
    # image file(s) / folder
    from PIL import Image

    paths = sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else d.split(",")
    imgs = []
    for pth in paths[:lim]:
        im = Image.open(pth).convert("L" if cin == 1 else "RGB")
        a = np.asarray(im, np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        imgs.append(_fit(a[None], size)[0])
    if not imgs:
        raise FileNotFoundError(f"no images in {d}")
    x, desc = _norm(np.stack(imgs), meta, args, f"{len(imgs)} image(s)")
    return x, None, desc


def _recipe_dataset(name, args, meta, lim):
    """Test split of a named dataset, preprocessed exactly as the run that wrote the checkpoint evaluated it
    (its recipe: normalisation, resize, event framing and T); a fixed random subset of --limit samples."""
    from ..training.api import recipe_of_run
    from ..training.data import build_datasets

    rec = meta.get("recipe")
    if not isinstance(rec, dict):
        raise ValueError(f"--data {args.data}: a dataset by name needs a checkpoint written by `spikedriven train` "
                         "(it carries the recipe: transforms, framing, T); this one has none. Pass image files or "
                         "an events .npz instead.")
    over = {"dataset": name}
    if args.data_dir:
        over["data_dir"] = args.data_dir
    ds = build_datasets(recipe_of_run(rec, over), splits=("test",))["test"]
    n = len(ds) if not lim else min(lim, len(ds))
    ids = np.arange(n) if n == len(ds) else np.sort(np.random.default_rng(args.seed).choice(len(ds), n, False))
    xs, ys = zip(*(ds[int(i)] for i in ids))
    x = np.stack([np.asarray(v, np.float32) for v in xs])
    return x, np.asarray(ys, np.int64), f"{name} test ({n} of {len(ds)} samples, the run's own preprocessing)"


# ------------------------------------------------------------------ command
def run(args) -> int:
    import torch

    model, meta = load_model(args)
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
        m = prepare_inference(model)
        preds = []
        with torch.inference_mode():
            m(torch.from_numpy(x[:1]))
            t0 = time.perf_counter()
            for i in range(0, n, args.batch):
                lg = m(torch.from_numpy(x[i:i + args.batch]))
                preds.append((lg.mean(0) if lg.ndim == 3 else lg).argmax(-1).numpy())
        preds = np.concatenate(preds)
    dt = time.perf_counter() - t0
    print(f"{args.engine} engine on {desc}: {n} samples in {dt:.2f} s ({1e3 * dt / max(n, 1):.2f} ms/sample)")
    k = min(args.show, n)
    if k:
        print("predictions:", " ".join(map(str, preds[:k].tolist())) + (" ..." if n > k else ""))
    if y is not None:
        print(f"accuracy {float((preds == y[:n]).mean()):.4f}")
    if counts:
        print("per-layer work per sample (measured by the engine; 'nominal' = T x rate x FLOPs incl. padding taps):")
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
