"""Event-driven engine vs the PyTorch model on an event-data model (e.g. dvs_mode + TET), on its own test split.

    python benchmarks/bench_engine_events.py --run runs/sim_dvs2 --samples 500

The test set is built exactly as the run's evaluation builds it (its recipe: framing, resize); a fixed random
subset of --samples streams is compared: spike agreement per neuron-step, predictions and accuracy of both.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/sim_dvs2", help="a run folder of `spikedriven train` (best.pt, last.pt)")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    from spikedriven import SpikeDrivenTransformer
    from spikedriven.checkpoint import load_checkpoint, load_into_model
    from spikedriven.engine import compile_model, compare_with_model
    from spikedriven.engine.validate import Agreement
    from spikedriven.train import recipe_of_run
    from spikedriven.training.data import build_datasets

    torch.set_num_threads(a.threads)
    best = f"{a.run}/best.pt"
    _, meta = load_checkpoint(best)
    model = SpikeDrivenTransformer(**meta["model_kwargs"])
    load_into_model(model, best)
    model.eval()
    ds = build_datasets(recipe_of_run(meta["recipe"]), splits=("test",))["test"]
    ids = np.random.default_rng(0).choice(len(ds), min(a.samples, len(ds)), replace=False)
    xs, ys = zip(*(ds[int(i)] for i in ids))
    x, y = torch.stack([torch.as_tensor(v) for v in xs]).float(), np.asarray(ys)
    print(f"{a.run}: input {tuple(x.shape)}, dvs_mode={model.dvs_mode}, tet={model.tet}")
    eng = compile_model(model, threads=a.threads)
    total, pe, pm = Agreement(), [], []
    t0 = time.perf_counter()
    for i in range(0, len(x), a.batch):
        xb = x[i:i + a.batch]
        total.update(compare_with_model(model, eng, xb))
        pe.append(eng.run(xb).predictions)
        with torch.inference_mode():
            o = model(xb)
        pm.append((o.mean(0) if o.ndim == 3 else o).argmax(-1).numpy())
    pe, pm = np.concatenate(pe), np.concatenate(pm)
    print(total.summary().splitlines()[0])
    print(f"same prediction {(pe == pm).sum()}/{len(pe)}; accuracy engine {(pe == y).mean():.4f}, model "
          f"{(pm == y).mean():.4f} ({time.perf_counter() - t0:.0f} s, engine backend {eng.backend})")


if __name__ == "__main__":
    main()
