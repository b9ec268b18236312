"""Streaming inference (spikedriven.stream) on a synthetic gesture stream: per-bin latency and events/s.

    python benchmarks/bench_stream.py                                  # Gesture size: 128 px, D=256, L=2, T=16
    python benchmarks/bench_stream.py --img 32 --bins 6 --train-steps 60 --plot docs/img/stream_confidence.png

Part 1 (latency): the registered Gesture model (``sdt_gesture_2_256_t16``; ``--model``, ``--img`` to shrink it),
untrained with BatchNorm calibrated on the stream so that every layer fires, fed ``--bins`` time bins of a
synthetic gesture recording (a bright disk circling on a 128 x 128 sensor, events on its leading and trailing
edges, plus noise). Four ways of producing a prediction per bin are timed:

* ``stream dense`` / ``stream events``: one ``StreamRunner.step`` per bin (membranes carried);
* ``rerun dense`` / ``rerun events``: what users do today, the batch model rerun per bin on the last T bins.

Part 2 (``--plot``): a tiny V1 (``--train-steps`` Adam steps on the synthetic task: a circle, a left-right sweep,
an up-down sweep) is streamed over one held-out recording of each class, and its running confidence per bin is
plotted.

Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

CLASSES = ("circle", "left-right", "up-down")


def gesture_events(kind: int, sensor: int = 128, duration_us: int = 1_500_000, slices: int = 150, radius=None,
                   noise: float = 0.002, seed: int = 0) -> dict:
    """A synthetic DVS recording: a disk moving (0: a circle, either way round; 1: a left-right sweep; 2: an up-down
    sweep); ON events where it arrives, OFF where it leaves, uniform timestamps inside each slice, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:sensor, 0:sensor]
    r = radius or sensor / 8
    phase, way = rng.uniform(0, 2 * np.pi), rng.choice((-1, 1))

    def disk(k):
        f = k / slices
        sweep = sensor * (0.2 + 0.6 * (0.5 - 0.5 * np.cos(2 * np.pi * f + phase)))
        if kind == 1:
            cx, cy = sweep, sensor / 2
        elif kind == 2:
            cx, cy = sensor / 2, sweep
        else:
            a = phase + way * 2 * np.pi * f
            cx, cy = sensor / 2 + sensor / 4 * np.cos(a), sensor / 2 + sensor / 4 * np.sin(a)
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r

    dt = duration_us / slices
    ts, xs, ys, ps = [], [], [], []
    prev = disk(0)
    for k in range(1, slices + 1):
        cur = disk(k)
        for pol, m in ((1, cur & ~prev), (0, prev & ~cur)):
            y, x = np.nonzero(m)
            ts.append((k - 1) * dt + rng.uniform(0, dt, len(y))), xs.append(x), ys.append(y), ps.append(np.full(len(y), pol))
        nn = rng.binomial(sensor * sensor, noise)
        ts.append((k - 1) * dt + rng.uniform(0, dt, nn)), xs.append(rng.integers(0, sensor, nn))
        ys.append(rng.integers(0, sensor, nn)), ps.append(rng.integers(0, 2, nn))
        prev = cur
    t = np.concatenate(ts).astype(np.int64)
    o = np.argsort(t, kind="stable")
    return {"t": t[o], "x": np.concatenate(xs)[o], "y": np.concatenate(ys)[o], "p": np.concatenate(ps)[o]}


def _frames(ev, T, side, img):
    from spikedriven.data.events import integrate_frames
    import torch.nn.functional as F

    fr = torch.from_numpy(integrate_frames(ev, T, side, side, split_by="time"))
    return fr if side == img else F.interpolate(fr, size=(img, img), mode="bilinear", align_corners=False)


def _pct(a, q):
    return float(np.percentile(np.asarray(a) * 1e3, q))


def latency(a):
    from spikedriven.engine import compile_model
    from spikedriven.models.factory import build_model
    from spikedriven.probe import calibrate_bn
    from spikedriven.stream import StreamRunner

    over = {"img_size": a.img} if a.img else {}
    model, _ = build_model(a.model, overrides=over)
    T, img = model.T, model.img_size
    ev = gesture_events(0, sensor=128, seed=1)
    width = (int(ev["t"][-1]) - int(ev["t"][0])) // T  # the reader's time bins of this recording
    calibrate_bn(model, [_frames(ev, T, 128, img)[None] * 0.5])
    model.eval()
    n_ev = 0
    bins = []
    from spikedriven.stream import EventFramer

    fr = EventFramer(128, 128, width)
    fr.push(ev)
    frames, _, counts = fr.pop(max_bins=a.bins)
    frames = torch.nn.functional.interpolate(torch.from_numpy(frames), size=(img, img), mode="bilinear",
                                             align_corners=False) if img != 128 else torch.from_numpy(frames)
    n_ev = int(counts.sum())
    print(f"{a.model} at {img} px (T={T}), {len(frames)} bins of {width / 1e3:.1f} ms, {n_ev} events, "
          f"{torch.get_num_threads()} thread(s)")
    rows = []
    for engine in a.engines.split(","):
        run = StreamRunner(model, engine=engine, threads=a.threads)
        run.step(frames[:1])  # warm-up, then forgotten
        run.reset()
        lat, cpu, sops = [], [], []
        for i in range(len(frames)):
            s, c = time.perf_counter(), time.process_time()
            run.step(frames[i:i + 1])
            lat.append(time.perf_counter() - s)
            cpu.append(time.process_time() - c)
            sops.append(sum(c.acc for c in run.last_counts if c.kind == "sop"))
        rows.append((f"stream {engine}", lat, cpu, np.mean(sops) if engine == "events" else None))
        # what users do today: the batch model on the window of the last T bins, rerun at every bin
        window = torch.zeros(1, T, *frames.shape[1:])
        if engine == "events":
            eng = compile_model(model, threads=a.threads)
            fwd = lambda w: eng.run(w)  # noqa: E731
        else:
            from spikedriven.inference import prepare_inference

            m = prepare_inference(model)
            fwd = lambda w: m(w)  # noqa: E731
        lat, cpu, sops = [], [], []
        with torch.inference_mode():
            fwd(window)
            for i in range(len(frames)):
                s, c = time.perf_counter(), time.process_time()
                window = torch.cat([window[:, 1:], frames[i:i + 1, None]], 1)
                res = fwd(window)
                lat.append(time.perf_counter() - s)
                cpu.append(time.process_time() - c)
                if engine == "events":
                    sops.append(res.total_sops)
        rows.append((f"rerun {engine} (T={T})", lat, cpu, np.mean(sops) if sops else None))
    # wall-clock latency suffers from other processes on a shared machine; CPU time (all threads of this process)
    # is what one bin costs
    print(f"  {'':24s} {'wall ms/bin p50':>15s} {'p99':>8s} {'CPU ms/bin p50':>14s} {'events/s (CPU)':>14s} "
          f"{'SOPs/bin':>12s}")
    for name, lat, cpu, sops in rows:
        print(f"  {name:24s} {_pct(lat, 50):15.2f} {_pct(lat, 99):8.2f} {_pct(cpu, 50):14.2f} "
              f"{n_ev / sum(cpu):14,.0f} {'' if sops is None else f'{sops:12,.0f}'}")


def confidence_plot(a):
    from spikedriven import SpikeDrivenTransformer
    from spikedriven.stream import StreamRunner
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    side, T = 32, 8
    model = SpikeDrivenTransformer(img_size=side, in_channels=2, num_classes=3, embed_dim=32, depth=1, num_heads=4,
                                   T=T, pooling_stat="1100")
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    t0 = time.perf_counter()
    for it in range(a.train_steps):  # a tiny model on the synthetic task: enough to have something to follow
        ys = rng.integers(0, 3, 8)
        x = torch.stack([_frames(gesture_events(int(y), sensor=side, slices=48, seed=int(rng.integers(1 << 30))),
                                 T, side, side) for y in ys])
        loss = torch.nn.functional.cross_entropy(model(x), torch.as_tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    print(f"trained the plot's tiny model: {a.train_steps} steps in {time.perf_counter() - t0:.0f} s "
          f"(last loss {loss.item():.3f})")
    ys = np.arange(30) % 3  # held-out recordings (other seeds than any training draw can give: >= 2**30)
    x = torch.stack([_frames(gesture_events(int(y), sensor=side, slices=48, seed=(1 << 30) + i), T, side, side)
                     for i, y in enumerate(ys)])
    with torch.no_grad():
        acc = float((model(x).argmax(-1).numpy() == ys).mean())
    print(f"held-out accuracy of the batch model on {len(ys)} recordings: {acc:.3f}")
    width = 1_500_000 // T  # the bins the model was trained on (1.5 s clips in T bins)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for true, ax in enumerate(axes):  # one held-out recording per class, twice a clip long
        ev = gesture_events(true, sensor=side, slices=96, seed=(1 << 31) + true, duration_us=3_000_000)
        run = StreamRunner(model, engine="dense", bin_us=width)
        res = []
        for i in range(0, len(ev["t"]), 500):
            res += run.feed({k: v[i:i + 500] for k, v in ev.items()})
        res += run.flush()
        t = np.array([(b.t_end - ev["t"][0]) / 1e3 for b in res])
        prob = torch.stack([torch.softmax(b.logits[0], -1) for b in res]).numpy()
        for k, name in enumerate(CLASSES):
            ax.plot(t, prob[:, k], marker="o", ms=3, lw=2.5 if k == true else 1, label=f"p({name})")
        ax.axvline(T * width / 1e3, color="grey", ls="--", lw=1)
        ax.text(T * width / 1e3, 0.5, f" T={T} bins:\n the batch\n model's clip", color="grey", fontsize=8)
        ax.set_title(f"a '{CLASSES[true]}' recording", fontsize=9)
        ax.set_xlabel(f"time (ms), one point per {width / 1e3:g} ms bin", fontsize=8)
        ax.set_ylim(0, 1)
        print(f"  {CLASSES[true]}: predictions per bin {''.join(str(b.prediction) for b in res)}")
    axes[0].set_ylabel("running softmax")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"StreamRunner, running confidence per closed bin (tiny V1 trained {a.train_steps} steps on the "
                 f"synthetic task; held-out batch accuracy {acc:.0%})", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=110)
    print(f"wrote {a.plot}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sdt_gesture_2_256_t16")
    ap.add_argument("--img", type=int, default=None, help="input side (default: the model's, 128)")
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--engines", default="dense,events")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default=None, help="write the confidence plot here (PNG)")
    ap.add_argument("--train-steps", type=int, default=150)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.bins > 0:
        latency(a)
    if a.plot:
        confidence_plot(a)


if __name__ == "__main__":
    main()
