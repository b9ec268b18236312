"""Raw events -> fixed-width time bins, incrementally, with the dataset readers' framing code.

A bin ``i`` spans ``[t0 + i*width, t0 + (i+1)*width)`` (``t0``: the first event's timestamp unless given); its
frame counts p == 0 events in channel 0 and the others in channel 1. The cut is ``data.events.time_bin_bounds``
and the counting ``data.events.count_frames``: the functions ``integrate_frames(..., split_by="time")`` uses, so a
recording framed here and by the dataset reader gives the same frames (the reader's last frame also absorbs the
tail beyond its T bins, see docs/streaming.md).

A bin is *closed* once an event at or after its end has arrived (timestamps never decrease, so nothing more can
fall into it), or by :meth:`EventFramer.advance` / :meth:`EventFramer.flush`. Bins without events are closed too and
give empty frames: time passes for the network (its membranes decay) even when the sensor is silent.
"""
from __future__ import annotations

import numpy as np

from ..data.events import count_frames, time_bin_bounds, validate_events
from ..data.static import DatasetError

__all__ = ["EventFramer", "as_event_dict"]


def as_event_dict(events) -> dict:
    """``events`` as a dict of t, x, y, p arrays: a dict (the readers' form), a structured array with those fields,
    or an ``(N, 4)`` array of columns t, x, y, p."""
    if isinstance(events, dict):
        return events
    a = np.asarray(events)
    if a.dtype.names:
        missing = [k for k in "txyp" if k not in a.dtype.names]
        if missing:
            raise ValueError(f"event array has fields {list(a.dtype.names)}; missing {missing} (need t, x, y, p)")
        return {k: a[k] for k in "txyp"}
    if a.ndim == 2 and a.shape[1] == 4:
        return {k: a[:, i] for i, k in enumerate("txyp")}
    raise ValueError(f"events must be a dict of t, x, y, p arrays, a structured array or an (N, 4) array of columns "
                     f"t, x, y, p; got {type(events).__name__} of shape {list(a.shape)}")


class EventFramer:
    """Incremental time-bin framing of one event stream on an ``H`` x ``W`` sensor (``width`` in timestamp units)."""

    def __init__(self, H: int, W: int, width: int, t0: int | None = None):
        if not (isinstance(width, (int, np.integer)) and width >= 1):
            raise ValueError(f"the bin width must be a whole number >= 1 of timestamp units, got {width!r}")
        self.H, self.W, self.width = int(H), int(W), int(width)
        self.t0 = None if t0 is None else int(t0)
        self.reset(self.t0)

    def reset(self, t0: int | None = None) -> None:
        self.t0 = None if t0 is None else int(t0)
        self.next_bin = 0  # index of the open bin
        self.last_t = None  # latest timestamp seen (events must not go back before it)
        self.pending = np.zeros((0, 4), np.int64)  # events of the open bin (and later ones), columns t, x, y, p

    # ------------------------------------------------------------------ input
    def push(self, events) -> int:
        """Add events (timestamps non-decreasing, also across calls; coordinates on the sensor): returns how many
        bins are closed now (take them with :meth:`pop`)."""
        try:
            ev = validate_events(as_event_dict(events), self.H, self.W, "event stream")
        except DatasetError as e:  # the readers' check, raised as what it is here: a bad value, not a bad file
            raise ValueError(str(e)) from None
        t = ev["t"]
        if t.dtype.kind == "f":
            if not (t == np.round(t)).all():
                raise ValueError("event stream: timestamps must be whole numbers (e.g. microseconds)")
        t = t.astype(np.int64)
        if len(t):
            back = np.nonzero(np.diff(t) < 0)[0]
            if len(back):
                i = int(back[0]) + 1
                raise ValueError(f"event stream: timestamps must not decrease; event {i} has t={t[i]} after "
                                 f"t={t[i - 1]} (sort the events by time first)")
            if self.last_t is not None and t[0] < self.last_t:
                raise ValueError(f"event stream: timestamps must not decrease; this chunk starts at t={t[0]}, before "
                                 f"the last event already fed (t={self.last_t})")
            if self.t0 is None:
                self.t0 = int(t[0])
            if t[0] < self.t0 + self.next_bin * self.width:
                raise ValueError(f"event stream: event at t={t[0]} falls in a bin that is already closed (bins up to "
                                 f"t={self.t0 + self.next_bin * self.width} were closed)")
            self.last_t = int(t[-1])
            new = np.stack([t, ev["x"], ev["y"], ev["p"]], 1).astype(np.int64)
            self.pending = np.concatenate([self.pending, new]) if len(self.pending) else new
        return self.closed()

    def advance(self, t: int) -> int:
        """The stream's clock has reached ``t`` with no event yet at or after it: closes every bin that ends by
        ``t`` (returns how many bins are closed now)."""
        t = int(t)
        if self.last_t is not None and t < self.last_t:
            raise ValueError(f"event stream: cannot advance the clock to t={t}, before the last event (t={self.last_t})")
        if self.t0 is None:
            self.t0 = t
        self.last_t = t
        return self.closed()

    def closed(self) -> int:
        """How many bins are closed and not yet taken."""
        if self.t0 is None or self.last_t is None:
            return 0
        return max((self.last_t - self.t0) // self.width - self.next_bin, 0)

    # ------------------------------------------------------------------ output
    def pop(self, max_bins: int | None = None, flush: bool = False):
        """``(frames [n, 2, H, W] float32, first bin index, events per bin [n])`` of the closed bins (at most
        ``max_bins``); ``flush``: also close the open bin when no closed one is left (end of the stream)."""
        n = self.closed()
        if max_bins is not None:
            n = min(n, int(max_bins))
        if n == 0 and flush and len(self.pending):
            return self._cut(1)
        return self._cut(n)

    def flush(self):
        """Close the open bin if it holds events (end of the stream): ``pop(flush=True)``."""
        return self.pop(flush=True)

    def _cut(self, n: int):
        first = self.next_bin
        if n == 0:
            return np.zeros((0, 2, self.H, self.W), np.float32), first, np.zeros(0, np.int64)
        ev = self.pending
        start = (self.t0 or 0) + first * self.width
        bounds = time_bin_bounds(ev[:, 0], start, self.width, n + 1)
        bounds[0] = 0  # pending events all belong to bins >= first (push refuses earlier ones)
        frames = count_frames(ev[:, 1], ev[:, 2], ev[:, 3], bounds, self.H, self.W)
        self.pending = ev[bounds[-1]:]
        self.next_bin = first + n
        return frames, first, np.diff(np.asarray(bounds, np.int64))

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        import torch

        out = {"framer.width": torch.tensor(self.width, dtype=torch.int64),
               "framer.next_bin": torch.tensor(self.next_bin, dtype=torch.int64),
               "framer.pending": torch.from_numpy(self.pending.copy())}
        if self.t0 is not None:
            out["framer.t0"] = torch.tensor(self.t0, dtype=torch.int64)
        if self.last_t is not None:
            out["framer.last_t"] = torch.tensor(self.last_t, dtype=torch.int64)
        return out

    def load(self, sd: dict) -> None:
        import torch

        w = int(sd["framer.width"])
        if w != self.width:
            raise ValueError(f"the saved stream state frames bins of {w} timestamp units, this runner {self.width}")
        pend = sd["framer.pending"]
        if pend.ndim != 2 or pend.shape[1] != 4:
            raise ValueError(f"framer.pending must be [n, 4] (t, x, y, p), got {list(pend.shape)}")
        self.next_bin = int(sd["framer.next_bin"])
        self.t0 = int(sd["framer.t0"]) if "framer.t0" in sd else None
        self.last_t = int(sd["framer.last_t"]) if "framer.last_t" in sd else None
        self.pending = pend.to(dtype=torch.int64).numpy().copy()
