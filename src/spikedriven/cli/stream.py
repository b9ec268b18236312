"""``spikedriven stream``: a recording's events fed to the model as they would arrive, one prediction per time bin."""
from __future__ import annotations

from .common import add_model_arguments, model_from_args

# sensor sides of the event datasets whose readers know them (data/events.py); others: the model's input size
_SENSORS = {"gesture": 128, "cifar10-dvs": 128, "cifar10-dvs-tet": 128}


def register(sub) -> None:
    p = sub.add_parser(
        "stream", help="streaming inference on an event file: a running prediction per time bin, with latency",
        description="Read a recording (.npz with arrays t, x, y, p as spikingjelly writes them, or tonic's (N, 4) "
                    ".npy x, y, p, t[ms]), cut it into time bins of --bin-ms as the events arrive, step the model once "
                    "per closed bin (membranes carried) and print the running prediction per bin, then a summary "
                    "(events/s, ms per bin, p50/p99 latency, SOPs per bin). After t bins the prediction is the batch "
                    "model's on those t frames; past the model's T it keeps averaging (docs/streaming.md).")
    add_model_arguments(p)
    p.add_argument("--events", required=True, metavar="FILE", help="the recording (.npz t, x, y, p or tonic .npy)")
    p.add_argument("--bin-ms", type=float, default=None, metavar="W",
                   help="time bin width in ms (default: the recording's duration / the model's T, the reader's "
                        "split_by='time' bins)")
    p.add_argument("--engine", choices=["events", "dense"], default="events",
                   help="events: the event-driven engine (CPU); dense: the PyTorch model (default: events)")
    p.add_argument("--sensor", type=int, default=None, metavar="SIDE",
                   help="sensor side in pixels (default: 128 for gesture / cifar10-dvs models, else the model's input "
                        "size); frames are resized to the model's input as the dataset reader does")
    p.add_argument("--chunk", type=int, default=2000,
                   help="events handed to the runner per call, as a camera driver would (default: 2000)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run)


def _sensor_side(args, model, meta) -> int:
    if args.sensor is not None:
        if args.sensor < 1:
            raise ValueError(f"--sensor must be >= 1, got {args.sensor}")
        return args.sensor
    from ..training.inputs import recipe_for_model

    r, _ = recipe_for_model(model, meta, getattr(args, "config", None))
    ds = getattr(r, "dataset", None) if r is not None else None
    from ..data.info import canonical_name

    return _SENSORS.get(canonical_name(ds or ""), int(model.img_size))


def read_events(path: str, side: int) -> dict:
    """A recording as the dataset readers read it: validated on a ``side`` x ``side`` sensor, sorted by time."""
    from pathlib import Path

    import numpy as np

    from ..data.events import _READERS, validate_events

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--events {path}: no such file")
    reader = _READERS.get(p.suffix)
    if reader is None:
        raise ValueError(f"--events {path}: unknown event file type (expected .npz with t, x, y, p or tonic's .npy)")
    ev = validate_events(reader(p), side, side, str(p))
    order = np.argsort(ev["t"], kind="stable")  # as the dataset reader: a recording is framed in time order
    return {k: v[order] for k, v in ev.items()}


def run(args) -> int:
    import time

    import numpy as np
    import torch

    from ..stream import StreamRunner

    if args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    if args.bin_ms is not None and not args.bin_ms > 0:
        raise ValueError(f"--bin-ms must be > 0, got {args.bin_ms}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = model_from_args(args)
    model.eval()
    if int(model.in_channels) != 2:
        raise ValueError(f"streaming events needs a model of 2 input channels (polarities), this one takes "
                         f"{model.in_channels}")
    side = _sensor_side(args, model, meta)
    ev = read_events(args.events, side)
    n = len(ev["t"])
    if n == 0:
        raise ValueError(f"--events {args.events}: the recording holds no events")
    t = ev["t"].astype(np.int64)
    if args.bin_ms is not None:
        width = max(int(round(args.bin_ms * 1000)), 1)
    else:
        width = max((int(t[-1]) - int(t[0])) // int(model.T), 1)
    nbins = (int(t[-1]) - int(t[0])) // width + 1
    if nbins > 20_000:  # a typo such as 0.001 for 1 would mean hours of steps
        raise ValueError(f"--bin-ms {args.bin_ms:g} cuts this {(int(t[-1]) - int(t[0])) / 1e3:.0f} ms recording into "
                         f"{nbins:,} bins (one network step each); choose a wider bin")
    runner = StreamRunner(model, engine=args.engine, bin_us=width, sensor=(side, side), threads=args.threads)
    runner.step(torch.zeros(1, 2, model.img_size, model.img_size))  # warm-up (kernel load), then forgotten
    runner.reset()
    print(f"{args.engine} engine, {n} events over {(int(t[-1]) - int(t[0])) / 1e3:.1f} ms, bins of "
          f"{width / 1e3:g} ms (the model was trained on T={model.T} frames)")
    if not args.quiet:
        print(f"  {'bin':>5s} {'t_end ms':>9s} {'events':>7s} {'pred':>4s} {'conf':>6s} {'latency ms':>10s} "
              f"{'SOPs':>12s}")
    bins = []
    t_start = time.perf_counter()
    for i in range(0, n, args.chunk):
        chunk = {k: v[i:i + args.chunk] for k, v in ev.items()}
        bins += _show(runner.feed(chunk), t[0], args.quiet)
    bins += _show(runner.flush(), t[0], args.quiet)
    wall = time.perf_counter() - t_start
    lat = np.array([b.latency_s for b in bins]) * 1e3
    sops = np.array([b.sops for b in bins], np.float64)
    last = bins[-1]
    print(f"final prediction {last.prediction} (confidence {last.confidence:.3f}) after {len(bins)} bins")
    print(f"summary: {n / wall:,.0f} events/s, {1e3 * wall / len(bins):.2f} ms per bin, latency p50 "
          f"{np.percentile(lat, 50):.2f} ms p99 {np.percentile(lat, 99):.2f} ms"
          + (f", {sops.mean():,.0f} SOPs per bin" if args.engine == "events" else
             ", SOPs: counted by --engine events only"))
    return 0


def _show(results, t0, quiet):
    if not quiet:
        for b in results:
            print(f"  {b.index:5d} {(b.t_end - t0) / 1e3:9.1f} {b.events:7d} {b.prediction:4d} {b.confidence:6.3f} "
                  f"{b.latency_s * 1e3:10.2f} {b.sops:12,d}")
    return results
