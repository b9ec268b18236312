"""Run folder (rank 0 only): resolved config, metrics CSV, TensorBoard, training-curve PNG, summaries.

A run folder belongs to one run: :func:`open_run_dir` creates it (default names are made unique by an atomic
``mkdir``), takes its lock (:class:`RunLock`, held until the run ends; a lock left by a killed process is
detected as stale and taken over), marks it as a run folder (:data:`MARKER`), refuses a folder that already holds
another run's files or files spikedriven did not make, and removes the temporary files a killed writer left
behind (only names of the ``outputs.temp_path`` form). :func:`resume_source` decides where ``--resume`` continues:
in a run folder only; any other checkpoint starts a new run folder.
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import shutil
import socket
import time
from pathlib import Path

from torch import nn

from ..energy.profile import profile_model
from ..outputs import atomic_write, atomic_write_text, is_temp_name, remove_stale_temp_files
from ..probe import firing_rates

__all__ = ["RunLogger", "RunLock", "RunFolderError", "make_run_dir", "open_run_dir", "run_files", "firing_summary",
           "energy_summary", "plot_curve", "write_text_atomic", "is_run_folder", "resume_source", "MARKER"]

METRIC_FIELDS = ["epoch", "step", "train_loss", "eval_loss", "top1", "top5", "ema_top1", "ema_top5", "lr",
                 "epoch_time_s", "elapsed_s"]

LOCK_NAME = ".spikedriven.lock"
# written when a run claims its folder: what makes a folder a run folder (its files are the tool's own)
MARKER = ".spikedriven.run"
# the header of the config.yaml a run writes: run folders of versions before MARKER are recognised by it
CONFIG_HEADER = "# resolved recipe (spikedriven train"
# what a run writes into its folder; a folder holding any of these (with results) belongs to a run already
RUN_FILES = ("last.pt", "best.pt", "best.safetensors", "metrics.csv", "config.yaml", "train.log", "curve.png", "tb")


class RunFolderError(RuntimeError):
    """The run folder is in use by another run, holds a finished one, or is not a run folder."""


write_text_atomic = atomic_write_text  # the name the trainer has always used


def is_run_folder(folder) -> bool:
    """True for a folder a run of spikedriven made: it holds :data:`MARKER` (or, from versions before the marker,
    a ``config.yaml`` the trainer wrote)."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    try:
        with open(folder / "config.yaml", encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(CONFIG_HEADER)
    except OSError:
        return False


def foreign_entries(folder) -> list[str]:
    """What a folder that is not a run folder holds, apart from the lock and temporary files of spikedriven."""
    try:
        names = sorted(p.name for p in Path(folder).iterdir())
    except OSError:
        return []
    return [n for n in names if n not in (LOCK_NAME, MARKER) and not is_temp_name(n)]


def resume_source(resume) -> tuple[Path | None, Path | None]:
    """``(checkpoint to continue from, run folder to continue in)`` for ``--resume``.

    A run folder (or its ``last.pt``) is continued in that folder; a run folder without ``last.pt`` but with its
    ``config.yaml`` (stopped before its first checkpoint) is started over there (checkpoint None). Any other
    checkpoint file (``best.pt``, ``best.safetensors``, an official ``.pth.tar``, a ``last.pt`` outside a run
    folder) gives no folder: the run starts a new run folder and never writes beside the file. A folder that is
    not a run folder is refused (:class:`RunFolderError`)."""
    p = Path(resume)
    if p.is_dir():
        if not is_run_folder(p):
            held = foreign_entries(p)
            raise RunFolderError(f"--resume {p}: not a run folder of spikedriven train (no {MARKER} marker"
                                 f"{'; it holds ' + ', '.join(held[:6]) if held else ''}); to start from a "
                                 f"checkpoint file in it, give the file (a new run folder is made)")
        folder, p = p, p / "last.pt"
    elif p.name == "last.pt" and is_run_folder(p.parent):
        folder = p.parent
    else:
        folder = None
    if not p.exists():
        if folder is not None and (folder / "config.yaml").is_file():
            return None, folder  # killed before its first last.pt: the run starts over in its own folder
        raise FileNotFoundError(f"resume checkpoint not found: {p}")
    return p, folder


def make_run_dir(output: str, experiment: str, default_name: str) -> Path:
    """``output/experiment`` (created if needed), or a new uniquely named ``output/<timestamp>-<default_name>[-i]``
    claimed with an atomic ``mkdir`` (two runs started in the same second get different folders)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if experiment:
        d = out / experiment
        d.mkdir(parents=True, exist_ok=True)
        return d
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{default_name}"
    for i in itertools.count():
        d = out / (name if i == 0 else f"{name}-{i}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


class RunLock:
    """An exclusive lock on a run folder (``.spikedriven.lock``), held for the run's life.

    ``fcntl.flock``: the kernel drops the lock when its process dies (kill -9 included), so a lock file left by a
    dead run is stale and simply taken over. Without ``fcntl`` (Windows) the file is created exclusively and
    holds the owner's pid; a lock whose pid no longer runs on this host is removed as stale."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.stale: str | None = None  # the previous holder's line when a stale lock was taken over

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown process"
        except OSError:
            return "unknown process"

    def _busy(self) -> RunFolderError:
        return RunFolderError(f"run folder {self.folder} is in use by another run ({self._holder()}); wait for it "
                              f"to end, or choose another --experiment name")

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:
            fcntl = None
        me = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
        while True:
            if fcntl is None:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    if self._holder_alive():
                        raise self._busy() from None
                    self.stale = self._holder()
                    try:
                        os.unlink(self.path)
                    except OSError:
                        pass
                    continue
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise self._busy() from None
                try:  # the holder before us may have unlinked the file we locked while releasing it
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                previous = os.read(fd, 4096).decode(errors="replace").strip()
                if previous:
                    self.stale = previous
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
            os.write(fd, (me + "\n").encode())
            self.fd = fd
            return self

    def _holder_alive(self) -> bool:
        line = self._holder()
        try:
            pid = int(line.split()[1])
        except (IndexError, ValueError):
            return True
        if socket.gethostname() not in line:
            return True  # another host's run: cannot tell, assume alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except (ImportError, OSError):
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def run_files(folder) -> list[str]:
    """The files of a run (checkpoints, metrics with rows, logs) that ``folder`` holds. A folder whose run left
    nothing but its recipe, a log and an empty metrics table (stopped before the first epoch ended) counts as
    empty: nothing of value would be overwritten."""
    folder = Path(folder)
    found = [n for n in RUN_FILES if (folder / n).exists()]
    valuable = [n for n in found if n not in ("config.yaml", "train.log", "metrics.csv", "tb")]
    if not valuable and "metrics.csv" in found and read_metrics(folder / "metrics.csv"):
        valuable.append("metrics.csv")
    return found if valuable else []


def open_run_dir(output: str, experiment: str, default_name: str, resume_from: Path | None = None,
                 overwrite: bool = False) -> tuple[Path, RunLock, list[str]]:
    """Claim the run folder: ``(folder, its held RunLock, stale temporary files removed)``.

    ``resume_from``: the run folder a resumed run continues (see :func:`resume_source`). The folder is that one
    when resuming without ``experiment``, else ``output/experiment``, else a new unique
    ``output/<timestamp>-<default_name>``. Refused (:class:`RunFolderError`): a folder another live run holds; a
    folder holding another run's results unless this run resumes from it; an existing folder that is not a run
    folder and is not empty. ``overwrite`` (``--overwrite``) starts the run over in such a folder: a run folder's
    previous run files are removed, a foreign folder's files are replaced only where the run writes its own names,
    and nothing else in it is touched."""
    if resume_from is not None and not experiment:
        d = Path(resume_from)
    else:
        d = make_run_dir(output, experiment, default_name)
    lock = RunLock(d).acquire()
    try:
        resuming_here = resume_from is not None and Path(resume_from).resolve() == d.resolve()
        if not resuming_here:
            if is_run_folder(d):
                existing = run_files(d)
                if existing and not overwrite:
                    raise RunFolderError(
                        f"run folder {d} already holds a run ({', '.join(existing)}); continue it with --resume {d}, "
                        f"or choose another --experiment name (--overwrite starts it over)")
                if existing:
                    _remove_run_files(d)
            else:
                foreign = foreign_entries(d)
                if foreign and not overwrite:
                    raise RunFolderError(
                        f"{d} is not a run folder: it holds files spikedriven did not make "
                        f"({', '.join(foreign[:6])}{' ...' if len(foreign) > 6 else ''}); choose another "
                        f"--experiment name or an empty folder (--overwrite uses it, replacing any files named like "
                        f"a run's: {', '.join(RUN_FILES)})")
        if not (d / MARKER).is_file():
            atomic_write_text(d / MARKER, "spikedriven run folder (written by spikedriven train; its other files "
                                          "are the run's)\n")
        removed = remove_stale_temp_files(d)
    except BaseException:
        lock.release()
        raise
    return d, lock, removed


def _remove_run_files(folder: Path) -> None:
    """Start a run folder over (``--overwrite``): the files a run made there, nothing else."""
    for n in RUN_FILES:
        p = folder / n
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.is_file() or p.is_symlink():
            p.unlink()


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
            write_text_atomic(self.csv_path, ",".join(METRIC_FIELDS) + "\r\n")

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
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in METRIC_FIELDS})
        write_text_atomic(self.csv_path, buf.getvalue())
        step = int(row.get("step") or row["epoch"])
        for k in ("train_loss", "eval_loss", "top1", "top5", "ema_top1", "lr"):
            v = row.get(k)
            if v not in (None, ""):
                self.scalar(f"epoch/{k}", float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


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


def curve_points(rows: list[dict], key: str, steps_per_epoch: int | None = None) -> tuple[list, list]:
    """(x, y) of one ``metrics.csv`` column for the curve: x = epochs trained (``step`` / steps_per_epoch when
    given, else epoch + 1), rows without a value skipped."""
    xs, ys = [], []
    for r in rows:
        if r.get(key) not in (None, ""):
            at_step = steps_per_epoch and r.get("step") not in (None, "")
            xs.append(int(r["step"]) / steps_per_epoch if at_step else int(r["epoch"]) + 1)
            ys.append(float(r[key]))
    return xs, ys


def plot_curve(csv_path, png_path, title: str = "", steps_per_epoch: int | None = None) -> bool:
    """Loss and top-1 per epoch from ``metrics.csv`` into a PNG (matplotlib, Agg). With ``steps_per_epoch`` each
    row sits at the epochs it has trained (its ``step`` / steps_per_epoch), so an epoch cut by the time limit shows
    where it stopped instead of as a whole epoch."""
    rows = read_metrics(csv_path)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def col(k):
        return curve_points(rows, k, steps_per_epoch)

    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
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
    try:
        atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
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
