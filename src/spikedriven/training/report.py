"""Run folder (rank 0 only): resolved config, metrics CSV, TensorBoard, training-curve PNG, summaries."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from torch import nn

from ..energy.profile import profile_model
from ..probe import firing_rates

__all__ = ["RunLogger", "make_run_dir", "firing_summary", "energy_summary", "plot_curve"]

METRIC_FIELDS = ["epoch", "step", "train_loss", "eval_loss", "top1", "top5", "ema_top1", "ema_top5", "lr",
                 "epoch_time_s", "elapsed_s"]


def make_run_dir(output: str, experiment: str, default_name: str) -> Path:
    name = experiment or f"{time.strftime('%Y%m%d-%H%M%S')}-{default_name}"
    d = Path(output) / name
    if not experiment and d.exists():
        i = 1
        while (Path(output) / f"{name}-{i}").exists():
            i += 1
        d = Path(output) / f"{name}-{i}"
    d.mkdir(parents=True, exist_ok=True)
    return d


class RunLogger:
    """Writes ``metrics.csv`` (one row per evaluated epoch), ``train.log`` and TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume: bool = False):
        self.dir = Path(run_dir)
        self.csv_path = self.dir / "metrics.csv"
        self.log_path = self.dir / "train.log"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"))
            except Exception as e:  # noqa: BLE001 - tensorboard is optional at run time
                self.log(f"TensorBoard disabled: {e}")
        if not resume or not self.csv_path.exists():
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(METRIC_FIELDS)

    def log(self, msg: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def epoch_row(self, row: dict) -> None:
        # a resumed run rewrites rows of epochs it repeats
        rows = read_metrics(self.csv_path)
        rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])]
        rows.append({k: row.get(k, "") for k in METRIC_FIELDS})
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k, "")) for k in METRIC_FIELDS})
        os.replace(tmp, self.csv_path)
        step = int(row.get("step") or row["epoch"])
        for k in ("train_loss", "eval_loss", "top1", "top5", "ema_top1", "lr"):
            v = row.get(k)
            if v not in (None, ""):
                self.scalar(f"epoch/{k}", float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curve(csv_path, png_path, title: str = "") -> bool:
    """Loss and top-1 per epoch from ``metrics.csv`` into a PNG (matplotlib, Agg)."""
    rows = read_metrics(csv_path)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def col(k):
        xs, ys = [], []
        for r in rows:
            if r.get(k) not in (None, ""):
                xs.append(int(r["epoch"]) + 1)
                ys.append(float(r[k]))
        return xs, ys

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, lab in (("train_loss", "train"), ("eval_loss", "eval")):
        x, y = col(k)
        if x:
            a1.plot(x, y, marker=".", label=lab)
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a1.grid(alpha=0.3)
    for k, lab in (("top1", "top-1"), ("ema_top1", "EMA top-1"), ("top5", "top-5")):
        x, y = col(k)
        if x:
            a2.plot(x, y, marker=".", label=lab)
    a2.set_xlabel("epoch")
    a2.set_ylabel("test accuracy (%)")
    a2.legend()
    a2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = str(png_path) + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
    return True


def firing_summary(model: nn.Module, batches) -> list[tuple[str, float]]:
    """Mean firing rate of every neuron layer over ``batches``."""
    return list(firing_rates(model, batches).items())


def energy_summary(model: nn.Module, batches) -> str:
    """A short energy + firing-rate report of ``model`` on ``batches``."""
    batches = list(batches)
    lines = []
    try:
        rep = profile_model(model, batches)
        lines.append(f"theoretical energy (45 nm, per sample): {rep.total_mj * 1e3:.2f} uJ "
                     f"= MAC {rep.mac_mj * 1e3:.2f} uJ + AC {rep.ac_mj * 1e3:.2f} uJ; "
                     f"SOPs {rep.total_sops / 1e6:.2f} M, mean AC input rate {rep.mean_rate:.3f}")
    except Exception as e:  # noqa: BLE001 - the summary must never fail a finished run
        lines.append(f"(energy report unavailable: {e})")
    rates = firing_summary(model, batches)
    if rates:
        mean = sum(r for _, r in rates) / len(rates)
        lo = min(rates, key=lambda t: t[1])
        hi = max(rates, key=lambda t: t[1])
        lines.append(f"firing rates over {len(rates)} neuron layers: mean {mean:.3f}, "
                     f"min {lo[1]:.3f} ({lo[0]}), max {hi[1]:.3f} ({hi[0]})")
    return "\n".join(lines)
