"""Meta-SpikeFormer (V2) on the event-driven engine vs our fastest dense fp32 PyTorch path: agreement, latency and
throughput vs firing rate.

    python benchmarks/bench_engine_v2.py --checkpoint runs/fmnist_v2_e4/best.pt            # a trained V2
    python benchmarks/bench_engine_v2.py --random --agreement 500                              # no checkpoint yet
    python benchmarks/bench_engine_v2.py --checkpoint ck.pt --agreement 0 --scales 1 --threads 1   # quick

Inputs: the test split of the checkpoint's dataset, prepared by the run's own recipe (``spikedriven train``
checkpoints store it); ``--random``: a calibrated random V2 (``--dims``, ``--strides``, ``--heads``, ``--T``; BN
statistics calibrated on Fashion-MNIST training images so that neurons fire) on Fashion-MNIST test images.

1. Agreement (threshold scale 1): predictions of the engine vs the PyTorch model (unfolded, eval), neuron-steps with
   a different spike (every neuron layer, every t), per-layer agreement, and where spikes differ, where the flips
   start and their distance to the threshold (float ties).
2. For each threshold scale s (every neuron's v_th x s, the same model in both paths) and each thread count: mean
   input firing rate of the spike-fed layers, additions per image (engine counts), batch-1 latency and batch-16
   throughput of the engine and of the dense path. Dense = ``prepare_inference`` (RepConvs and BN folded) under
   ``torch.inference_mode()``, fastest of channels_last on/off x LIF backend auto (fused C++) / torch, chosen per
   thread count. Each input is timed on both paths back to back (the order alternating), so that both see the
   same load on a shared machine; the speedup is the median of the per-input ratios. The V1-style figure (the best
   dense median of the sweep at that thread count / the engine's median; dense work does not depend on the rate)
   is printed in brackets.
Writes a JSON file (--out) with the machine (CPU model, load averages before and after) and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from bench_engine import best_dense, fmnist_test  # noqa: E402


def paired_ms(dense, engine, inputs):
    """[n, 3] array: per input, dense ms, engine ms (timed back to back, the order alternating) and their ratio."""
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


def timed_ms(fn, inputs):
    """(median, min) wall time of fn(x) over the inputs, in ms."""
    ts = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts)), 1e3 * float(np.min(ts))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def load_model(a):
    """(model, x test inputs, y labels, description)."""
    if a.random:
        from spikedriven import MetaSpikeFormer
        from spikedriven.probe import calibrate_bn

        torch.manual_seed(a.seed)
        model = MetaSpikeFormer(img_size=28, in_channels=1, num_classes=10, embed_dim=tuple(a.dims),
                                num_heads=a.heads, downsample_strides=tuple(a.strides), T=a.T)
        mean, std = 0.2860, 0.3530
        x, y = fmnist_test(28, mean, std, None, a.data_dir)
        calib = x[-512:]  # BN statistics from the last 512 test images, which are not used below
        calibrate_bn(model, [calib[i:i + 128] for i in range(0, 512, 128)])
        return (model.eval(), x[:-512], y[:-512],
                f"calibrated random V2 ({model.arch_summary()}, heads {a.heads}, seed {a.seed}; Fashion-MNIST test "
                f"images, BN statistics from 512 of them not used for the figures)")
    from spikedriven.models.factory import build_model
    from spikedriven.training.inputs import dataset_inputs, recipe_for_model

    model, meta = build_model(None, checkpoint=a.checkpoint)
    model.eval()
    r, src = recipe_for_model(model, meta)
    if r is None:
        raise SystemExit(f"{a.checkpoint}: {src}")
    x, y, desc = dataset_inputs(r, a.limit or None, 0)
    return model, x, y, f"{a.checkpoint} ({model.arch_summary()}); {desc}, prepared by {src}"


def agreement(model, x, y, threads, backend, batch=100):
    from spikedriven.engine import compile_model
    from spikedriven.engine.validate import Agreement, compare_with_model

    eng = compile_model(model, threads=threads, backend=backend)
    total = Agreement()
    pe, pm = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        total.update(compare_with_model(model, eng, xb))
        pe.append(eng.run(xb).predictions)
        with torch.inference_mode():
            pm.append(model(xb).argmax(-1).numpy())
    return total, np.concatenate(pe), np.concatenate(pm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a `spikedriven train` checkpoint of a Meta-SpikeFormer")
    src.add_argument("--random", action="store_true", help="a calibrated random V2 (no checkpoint)")
    ap.add_argument("--dims", type=int, nargs=4, default=[16, 32, 64, 80], help="--random: embed_dim")
    ap.add_argument("--strides", type=int, nargs=5, default=[2, 1, 2, 1, 1], help="--random: downsample_strides")
    ap.add_argument("--heads", type=int, default=2, help="--random: num_heads")
    ap.add_argument("--T", type=int, default=1, help="--random: time steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="test samples loaded (0: the whole test split)")
    ap.add_argument("--agreement", type=int, default=10000, help="test samples for the agreement check (0: skip)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--lat-reps", type=int, default=40)
    ap.add_argument("--thr-reps", type=int, default=16)
    ap.add_argument("--backends", nargs="+", default=["cpp"], choices=["cpp", "numba"],
                    help="engine kernel backends to time; the first one is the engine of the speedup columns")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist", help="--random: Fashion-MNIST IDX files")
    ap.add_argument("--out", default="runs/bench_engine_v2.json")
    a = ap.parse_args(argv)
    numba = None
    if "numba" in a.backends:
        import numba

    from spikedriven.engine import compile_model, scale_thresholds
    from spikedriven.inference import prepare_inference

    load0 = os.getloadavg()
    model, x, y, desc = load_model(a)
    print(f"# {desc}\n\nCPU: {cpu_name()} ({os.cpu_count()} logical CPUs); load average at start "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}\n", flush=True)
    result = {"model": desc, "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "numba": numba and numba.__version__, "backends": a.backends, "loadavg_start": load0}
    if a.agreement:
        t0 = time.perf_counter()
        ag, pe, pm = agreement(model, x[:a.agreement], y[:a.agreement], max(a.threads), a.backends[0])
        n = len(pe)
        yy = y[:n].numpy()
        fr = ag.layer_fractions()
        worst = min(fr, key=fr.get)
        result["agreement"] = dict(
            samples=n, same_prediction=int((pe == pm).sum()), acc_engine=float((pe == yy).mean()),
            acc_model=float((pm == yy).mean()), neuron_steps=ag.neurons, mismatched=ag.mismatched,
            fraction=ag.fraction, samples_with_flip=ag.samples_with_flip, max_logit_diff=ag.max_logit_diff,
            per_layer={k: v for k, v in ag.per_layer.items() if v[0]}, worst_layer=[worst, fr[worst]],
            layers=len(fr), origins=ag.origins, origin_layers=ag.origin_layers,
            max_origin_margin=ag.max_origin_margin, origins_are_ties_1e4=ag.origins_are_ties(1e-4),
            seconds=time.perf_counter() - t0)
        print(f"## Agreement on {n} test images\n")
        print(f"same prediction {int((pe == pm).sum())}/{n}; accuracy engine {(pe == yy).mean():.4f}, model "
              f"{(pm == yy).mean():.4f}; {len(fr)} neuron layers, lowest per-layer agreement {fr[worst]:.6%} "
              f"({worst})")
        print(ag.summary(), "\n", flush=True)

    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    xs1 = [x[perm[i:i + 1]] for i in range(a.lat_reps)]
    xs16 = [x[perm[100 + 16 * i:116 + 16 * i]] for i in range(a.thr_reps)]
    rows = []
    for n in a.threads:
        torch.set_num_threads(n)
        if numba is not None:
            numba.set_num_threads(n)
        cl, be = best_dense(model, n, xs1, xs16)
        print(f"## {n} thread(s): dense path = prepare_inference + inference_mode, channels_last={cl}, "
              f"lif_backend={be}\n", flush=True)
        for s in a.scales:
            ms = scale_thresholds(model, s) if s != 1.0 else model
            d = prepare_inference(ms, channels_last=cl, lif_backend=be)
            engs = {kb: compile_model(ms, threads=n, backend=kb) for kb in a.backends}
            eng = engs[a.backends[0]]
            with torch.inference_mode():
                for xb in xs1[:3] + xs16[:2]:
                    d(xb)
                for e in engs.values():
                    e.run(xs1[0])
                    e.run(xs16[0])
                act = neu = sops = macs = 0
                for xb in xs16:
                    r = eng.run(xb)
                    for c in r.counts:
                        if c.kind == "sop":
                            act += c.active_inputs
                            neu += c.input_neurons
                            sops += c.acc
                        elif c.kind == "mac":
                            macs += c.acc
                others = {}
                for kb in a.backends[1:]:
                    others[f"{kb}_b1_ms"] = timed_ms(engs[kb].run, xs1)[0]
                    others[f"{kb}_b16_ips"] = 16e3 / timed_ms(engs[kb].run, xs16)[0]
                t1 = paired_ms(d, eng.run, xs1)
                t16 = paired_ms(d, eng.run, xs16)
            (d1, e1, r1), (d16, e16, r16) = (np.median(v, axis=0) for v in (t1, t16))
            nimg = 16 * len(xs16)
            row = dict(threads=n, scale=s, rate=act / neu, sops_per_sample=sops / nimg, macs_per_sample=macs / nimg,
                       events_b1_ms=e1, dense_b1_ms=d1, events_b16_ips=16e3 / e16, dense_b16_ips=16e3 / d16,
                       paired_speedup_b1=r1, paired_speedup_b16=r16, dense_channels_last=cl, dense_lif_backend=be,
                       engine_backend=a.backends[0],
                       min_ms=dict(events_b1=t1[:, 1].min(), dense_b1=t1[:, 0].min(), events_b16=t16[:, 1].min(),
                                   dense_b16=t16[:, 0].min()), **others)
            rows.append(row)
            print(f"scale {s:4g} rate {act / neu:.4f} SOPs/img {sops / nimg / 1e6:6.2f}M MACs/img "
                  f"{macs / nimg / 1e6:5.2f}M | b1 events {e1:7.2f} ms dense {d1:7.2f} ms x{r1:5.2f} | b16 "
                  f"events {16e3 / e16:7.1f}/s dense {16e3 / d16:7.1f}/s x{r16:5.2f}"
                  + "".join(f" | {k} {v:.2f}" for k, v in others.items()), flush=True)
    for n in a.threads:
        mine = [r for r in rows if r["threads"] == n]
        best1 = min(r["dense_b1_ms"] for r in mine)
        best16 = max(r["dense_b16_ips"] for r in mine)
        for r in mine:
            r["dense_b1_ms_best"], r["dense_b16_ips_best"] = best1, best16
            r["speedup_b1"] = best1 / r["events_b1_ms"]
            r["speedup_b16"] = r["events_b16_ips"] / best16
    result["sweep"] = rows
    result["loadavg_end"] = os.getloadavg()
    print("\n## Speedup vs firing rate (Markdown)\n")
    print("speedup = median over the timed inputs of dense time / engine time, each input timed on both paths back "
          "to back (the order alternating); in brackets: the best dense median of the sweep / the engine median.\n")
    print("| threads | v_th scale | mean input rate | SOPs/img | MACs/img | events b1 (ms) | dense b1 (ms) | "
          "speedup b1 | events b16 (img/s) | dense b16 (img/s) | speedup b16 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['scale']:g} | {r['rate']:.4f} | {r['sops_per_sample'] / 1e6:.2f}M | "
              f"{r['macs_per_sample'] / 1e6:.2f}M | {r['events_b1_ms']:.2f} | {r['dense_b1_ms']:.2f} | "
              f"**{r['paired_speedup_b1']:.2f}x** ({r['speedup_b1']:.2f}x) | {r['events_b16_ips']:.0f} | "
              f"{r['dense_b16_ips']:.0f} | **{r['paired_speedup_b16']:.2f}x** ({r['speedup_b16']:.2f}x) |")
    le = result["loadavg_end"]
    print(f"\nCPU: {result['cpu']}; load average at start {load0[0]:.2f}, at end {le[0]:.2f} {le[1]:.2f} {le[2]:.2f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
