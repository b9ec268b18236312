"""Quickly train a small SDT on Fashion-MNIST (28 px padded to 32) for the engine benchmarks.

A stand-in until the training recipe's Fashion-MNIST run exists: it only has to be a *trained* model, so
that firing rates are natural. Saves ``{"state_dict", "model_kwargs", "preprocess", "metric"}`` which
``spikedriven.checkpoint.load_checkpoint`` reads (meta = everything but the state_dict).

    python benchmarks/train_small_fmnist.py --out runs/engine_fmnist_128/model.pth --train-samples 20000
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def load_idx(split: str, root: str = FMNIST_DIR):
    pre = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(root, f"{pre}-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(root, f"{pre}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def preprocess(x_u8: np.ndarray, pad: int = 2) -> torch.Tensor:
    """uint8 [N,28,28] -> normalised float [N,1,32,32] (zero-padded *before* normalisation: black border)."""
    x = torch.from_numpy(np.ascontiguousarray(x_u8)).float().div_(255.0)
    x = F.pad(x, (pad, pad, pad, pad))
    return ((x - MEAN) / STD).unsqueeze(1)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/engine_fmnist_128/model.pth")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from spikedriven import SpikeDrivenTransformer

    kw = dict(img_size=32, in_channels=1, num_classes=10, embed_dim=a.embed_dim, depth=a.depth, T=a.T,
              pooling_stat="0011")
    model = SpikeDrivenTransformer(**kw)
    xs, ys = load_idx("train")
    g = np.random.default_rng(a.seed)
    sel = g.permutation(len(xs))[: a.train_samples]
    X, Y = preprocess(xs[sel]), torch.from_numpy(ys[sel].astype(np.int64))
    steps = a.epochs * math.ceil(len(X) / a.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    model.train()
    t0, step = time.time(), 0
    for ep in range(a.epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), a.batch):
            j = perm[i:i + a.batch]
            loss = F.cross_entropy(model(X[j]), Y[j], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 20 == 0:
                print(f"ep {ep} step {step}/{steps} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    xt, yt = load_idx("test")
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, 2000, 200):
            correct += (model(preprocess(xt[i:i + 200])).argmax(1) == torch.from_numpy(yt[i:i + 200].astype(np.int64))).sum().item()
    acc = correct / 2000
    print(f"test accuracy (first 2000): {acc:.4f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "model_kwargs": kw, "metric": acc,
                "preprocess": {"dataset": "fashion-mnist", "pad": 2, "mean": MEAN, "std": STD},
                "train_samples": a.train_samples, "epochs": a.epochs}, a.out)
    print("saved", a.out)


if __name__ == "__main__":
    main()
