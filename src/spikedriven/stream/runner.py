"""``StreamRunner``: a Spike-driven Transformer (V1 or V2) fed one frame, or raw events, at a time.

After ``t`` steps its logits are those of the batch model on the first ``t`` frames (the batch model built with
T = t): the carried state is each neuron's membrane and the head's running sum of per-step logits. See
docs/streaming.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .framing import EventFramer

__all__ = ["StreamRunner", "BinResult"]

ENGINES = ("dense", "events")


@dataclass
class BinResult:
    """One closed time bin: its index, time span, events, the running logits after it, and what it cost."""

    index: int
    t_start: int
    t_end: int
    events: int
    logits: torch.Tensor  # [1, K]: running mean over the steps since reset
    latency_s: float  # framing + one network step
    sops: int  # event engine: additions performed in this step (0 for the dense engine)
    counts: list = field(default_factory=list, repr=False)

    @property
    def prediction(self) -> int:
        return int(self.logits[0].argmax())

    @property
    def confidence(self) -> float:
        return float(torch.softmax(self.logits[0].double(), -1).max())


class StreamRunner:
    """Run ``model`` step by step: ``step(frame)``, ``feed(events)``, ``reset()``, ``state_dict()``.

    Args:
        model: a ``SpikeDrivenTransformer`` (V1) or ``MetaSpikeFormer`` (V2); it is copied (eval mode), never changed.
        engine: "dense" (the PyTorch model, any float dtype) or "events" (the event-driven engine, float32, CPU).
        bin_us: width of a time bin for :meth:`feed`, in timestamp units (microseconds for the readers' files).
        sensor: ``(H, W)`` of the event sensor (default: the model's input size); frames of another size are
            resized bilinearly to the model's input, as the CIFAR10-DVS reader does.
        threads, backend: the event engine's threads and kernels (``spikedriven.engine.compile_model``).
    """

    def __init__(self, model, engine: str = "dense", bin_us: int | None = None, sensor: tuple[int, int] | None = None,
                 threads: int | None = None, backend: str = "auto"):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        self.T, self.in_channels, self.img_size = int(model.T), int(model.in_channels), int(model.img_size)
        if engine == "dense":
            from .dense import DenseStepper

            self._stepper = DenseStepper(model)
            self._membranes = self._stepper.store
            self.dtype = next(model.parameters()).dtype
        else:
            from .event import EventStepper

            self._stepper = EventStepper(model, threads=threads, backend=backend)
            self._membranes = self._stepper.state
            self.dtype = torch.float32
        self.neuron_names = list(self._stepper.names)
        self.sensor = tuple(sensor) if sensor is not None else (self.img_size, self.img_size)
        self._framer = None if bin_us is None else EventFramer(self.sensor[0], self.sensor[1], bin_us)
        self._sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.last_counts: list = []
        self.last_step_logits: torch.Tensor | None = None

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything: membranes at 0, no steps, the framer's open bin and time origin dropped."""
        self._membranes.clear()
        self._sums.clear()
        self.steps = 0
        self.last_counts, self.last_step_logits = [], None
        if self._framer is not None:
            self._framer.reset()

    def logits(self) -> torch.Tensor:
        """The running logits: the mean over the steps so far of the per-step logits (V2 kd: of head and head_kd,
        averaged as the model does); before any step, an error."""
        if not self.steps:
            raise RuntimeError("no step yet: feed a frame (step) or events (feed) first")
        if self.engine == "events":
            t = np.float32(self.steps)
            means = {k: v.numpy() / t for k, v in self._sums.items()}
            if "head_kd" in means:
                return torch.from_numpy((means["head"] + means["head_kd"]) / np.float32(2))
            return torch.from_numpy(next(iter(means.values())))
        means = {k: v / self.steps for k, v in self._sums.items()}
        if "head_kd" in means:
            return (means["head"] + means["head_kd"]) / 2
        return next(iter(means.values()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything carried, as tensors only (safe to save with ``torch.save`` / load with ``weights_only``):
        ``<engine>.membrane.<neuron>``, ``<engine>.sum.<head>``, ``steps`` and the framer's ``framer.*``."""
        sd = {"steps": torch.tensor(self.steps, dtype=torch.int64)}
        for k, v in self._membranes.items():
            sd[f"{self.engine}.membrane.{k}"] = torch.as_tensor(v).clone()
        for k, v in self._sums.items():
            sd[f"{self.engine}.sum.{k}"] = v.clone()
        if self._framer is not None:
            sd.update(self._framer.state())
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Resume from :meth:`state_dict` output (checked: tensors only, this engine's and this model's neurons)."""
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError("a stream state must be a dict of tensors (from StreamRunner.state_dict)")
        other = "events" if self.engine == "dense" else "dense"
        if any(k.startswith(other + ".") for k in sd):
            raise ValueError(f"this stream state was saved by the {other!r} engine; this runner uses "
                             f"{self.engine!r} (membrane layouts differ)")
        if "steps" not in sd or sd["steps"].numel() != 1 or sd["steps"].is_floating_point() or int(sd["steps"]) < 0:
            raise ValueError("a stream state needs 'steps', a whole number >= 0")
        known = set(self.neuron_names)
        mem, sums, framer = {}, {}, {}
        for k, v in sd.items():
            if k == "steps":
                continue
            if k.startswith("framer."):
                framer[k] = v
            elif k.startswith(f"{self.engine}.membrane."):
                name = k[len(self.engine) + 10:]
                if name not in known:
                    raise ValueError(f"stream state: {name!r} is not a neuron of this model")
                if not v.is_floating_point():
                    raise ValueError(f"stream state: {k} must be floating point, got {v.dtype}")
                mem[name] = v.clone() if self.engine == "dense" else v.to(torch.float32).numpy().copy()
            elif k.startswith(f"{self.engine}.sum.") and k.rsplit(".", 1)[1] in ("head", "head_kd", "features"):
                sums[k.rsplit(".", 1)[1]] = v.clone()
            else:
                raise ValueError(f"stream state: unexpected entry {k!r}")
        steps = int(sd["steps"])
        if bool(steps) != bool(sums):
            raise ValueError(f"stream state: {steps} step(s) but {len(sums)} head sum(s)")
        if framer:
            if self._framer is None:
                raise ValueError("stream state holds a framer state but this runner has no bin width (bin_us)")
            self._framer.load(framer)
        self.reset()
        self._membranes.update(mem)
        self._sums.update(sums)
        self.steps = steps
        if framer:
            self._framer.load(framer)

    def save_state(self, path) -> None:
        """Write :meth:`state_dict` atomically (tensors only)."""
        from ..checkpoint import atomic_save

        atomic_save(self.state_dict(), path)

    def load_state(self, path) -> None:
        """Read a file written by :meth:`save_state` (``weights_only``: nothing in it can run)."""
        from ..checkpoint import read_checkpoint_file

        self.load_state_dict(read_checkpoint_file(path))

    # ------------------------------------------------------------------ frames
    def _check_frame(self, frame) -> torch.Tensor:
        x = torch.as_tensor(frame)
        if x.ndim != 4:
            raise ValueError(f"a frame is [B, C, H, W], got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"a frame must be floating point (event counts as float), got {x.dtype}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the model takes {self.in_channels} input channel(s), the frame has {x.shape[1]}")
        return x

    def step(self, frame) -> torch.Tensor:
        """One time step on ``frame`` ``[B, C, H, W]``; returns the running logits ``[B, K]`` (see :meth:`logits`)."""
        x = self._check_frame(frame)
        if self.engine == "events":
            outs, counts = self._stepper.step(x.detach().to("cpu", torch.float32).numpy())
            outs = {k: torch.from_numpy(v) for k, v in outs.items()}
        else:
            outs, counts = self._stepper.step(x), []
        if self._sums and {k: v.shape for k, v in outs.items()} != {k: v.shape for k, v in self._sums.items()}:
            raise ValueError("this step's batch differs from the steps before (call reset() first)")
        for k, v in outs.items():
            self._sums[k] = v.clone() if k not in self._sums else self._sums[k] + v
        self.steps += 1
        self.last_counts = counts
        self.last_step_logits = outs.get("head", outs.get("features"))
        return self.logits()

    # ------------------------------------------------------------------ events
    def _resize(self, frames: torch.Tensor) -> torch.Tensor:
        if tuple(frames.shape[-2:]) == (self.img_size, self.img_size):
            return frames
        import torch.nn.functional as F

        return F.interpolate(frames, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)

    def _run_bins(self, flush: bool) -> list[BinResult]:
        fr = self._framer
        out = []
        while True:
            t0 = time.perf_counter()
            last = flush and not fr.closed()  # end of stream: the open bin is the last one to close
            frames, first, nev = fr.pop(max_bins=64, flush=last)
            if not len(frames):
                return out
            frames = self._resize(torch.from_numpy(frames))
            for i in range(len(frames)):
                s = time.perf_counter() if i else t0
                logits = self.step(frames[i:i + 1].to(self.dtype))
                sops = sum(c.acc for c in self.last_counts if c.kind == "sop")
                b = first + i
                out.append(BinResult(b, fr.t0 + b * fr.width, fr.t0 + (b + 1) * fr.width, int(nev[i]), logits,
                                     time.perf_counter() - s, int(sops), self.last_counts))
            if last:
                return out

    def feed(self, events) -> list[BinResult]:
        """Add raw events (a dict of t, x, y, p arrays as the readers return, a structured array, or an (N, 4)
        array t, x, y, p; timestamps non-decreasing) and step once per bin they close. Returns one
        :class:`BinResult` per closed bin (empty bins included: they are zero frames)."""
        if self._framer is None:
            raise ValueError("feed needs a bin width: StreamRunner(model, bin_us=...)")
        self._framer.push(events)
        return self._run_bins(flush=False)

    def advance(self, t: int) -> list[BinResult]:
        """The clock reached ``t`` without events: step for every bin that ended by then."""
        if self._framer is None:
            raise ValueError("advance needs a bin width: StreamRunner(model, bin_us=...)")
        self._framer.advance(t)
        return self._run_bins(flush=False)

    def flush(self) -> list[BinResult]:
        """End of the stream: close (and step on) the open bin if it holds events."""
        if self._framer is None:
            raise ValueError("flush needs a bin width: StreamRunner(model, bin_us=...)")
        return self._run_bins(flush=True)
