"""Streaming inference: a Spike-driven Transformer (V1 or V2) run step by step as event-camera data arrives.

    from spikedriven.stream import StreamRunner
    run = StreamRunner(model, engine="events", bin_us=50_000)   # or engine="dense"
    for b in run.feed(events):          # dict of t, x, y, p arrays (the dataset readers' form)
        print(b.index, b.prediction, b.confidence, b.latency_s)
    run.step(frame)                     # or one [B, C, H, W] frame at a time
    state = run.state_dict()            # membranes, head sums, framer: tensors only

After t steps the logits equal the batch model's on the first t frames; see docs/streaming.md.
"""
from __future__ import annotations

from .framing import EventFramer, as_event_dict
from .runner import BinResult, StreamRunner

__all__ = ["StreamRunner", "BinResult", "EventFramer", "as_event_dict"]
