"""Event-camera (DVS) data: readers for the real on-disk formats, integration into T frames, on-disk cache.

Formats read:
- spikingjelly ``events_np``: one ``.npz`` per sample with arrays ``t, x, y, p`` (DVS128 Gesture:
  ``root/events_np/{train,test}/<label>/*.npz``; CIFAR10-DVS: ``root/events_np/<class_name>/*.npz``);
- tonic DVSGesture: ``root/DVSGesture/ibmGestureTrain|ibmGestureTest/user*_*/<label>.npy``, (N, 4) ints
  ``x, y, p, t`` with t in ms;
- tonic CIFAR10DVS: ``root/CIFAR10DVS/<class_name>/*.aedat4`` (needs the optional ``aedat`` package);
- the official ``cifar10-dvs-tet`` folders: ``root/{train,test}/<index>.pt`` holding ``(data, target)`` with time
  on the last axis.

Framing follows spikingjelly's ``split_by="number"`` rule used by the paper: frame i holds events
``[i*(N//T), (i+1)*(N//T))`` and the last frame ends at N (the remainder goes into the last frame, no event is
dropped); channel 0 counts OFF events (p <= 0: 0 or -1), channel 1 ON events (p > 0). Frames hold event counts
(float32).
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..outputs import temp_path
from .static import DatasetError

FRAME_FORMAT_VERSION = 1
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def integrate_frames(events: dict, T: int, H: int, W: int, split_by: str = "number") -> np.ndarray:
    """Events (dict of t, x, y, p arrays) -> float32 frames [T, 2, H, W] of event counts.

    number: equal event counts per frame, remainder into the last frame. time: equal time bins
    (width (t_last - t_first) // T), the last bin absorbing the tail. With fewer than T events, the leading
    frames are empty and the last frame gets them all (N // T = 0), exactly as the rule says.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    x, y, p = (np.asarray(events[k]).astype(np.int64) for k in ("x", "y", "p"))
    t = np.asarray(events["t"])
    n = len(x)
    if not (len(y) == len(p) == len(t) == n):
        raise ValueError(f"event arrays differ in length: t {len(t)}, x {n}, y {len(y)}, p {len(p)}")
    if n and (x.min() < 0 or x.max() >= W or y.min() < 0 or y.max() >= H):
        raise ValueError(f"event coordinates outside the {W}x{H} sensor (x {x.min()}..{x.max()}, "
                         f"y {y.min()}..{y.max()})")
    if split_by == "number":
        step = n // T
        bounds = [i * step for i in range(T)] + [n]
    elif split_by == "time":
        if n == 0:
            bounds = [0] * (T + 1)
        else:
            t0, width = int(t[0]), max((int(t[-1]) - int(t[0])) // T, 1)
            bounds = time_bin_bounds(t, t0, width, T) + [n]
            bounds[0] = 0
    else:
        raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")
    return count_frames(x, y, p, bounds, H, W)


def time_bin_bounds(t: np.ndarray, t0: int, width: int, nbins: int) -> list[int]:
    """Start index of each time bin ``[t0 + i*width, t0 + (i+1)*width)``, i < ``nbins``, in sorted timestamps ``t``.

    The one definition of a time bin: :func:`integrate_frames` (``split_by="time"``) and the streaming framer
    (:mod:`spikedriven.stream`) both cut with it."""
    return [int(np.searchsorted(t, t0 + i * width, side="left")) for i in range(nbins)]


def count_frames(x: np.ndarray, y: np.ndarray, p: np.ndarray, bounds, H: int, W: int) -> np.ndarray:
    """Events ``[bounds[i], bounds[i+1])`` -> frame i: float32 ``[len(bounds) - 1, 2, H, W]`` of event counts,
    channel 0 counting OFF events (p <= 0, so both 0/1 and -1/+1 polarity codings work), channel 1 ON events (p > 0)
    (coordinates already checked to lie on the sensor)."""
    nf = len(bounds) - 1
    pol = (np.asarray(p) > 0).astype(np.int64)
    frames = np.zeros((nf, 2 * H * W), np.float32)
    flat = pol * (H * W) + np.asarray(y, np.int64) * W + np.asarray(x, np.int64)
    for i in range(nf):
        a, b = bounds[i], bounds[i + 1]
        if b > a:
            frames[i] = np.bincount(flat[a:b], minlength=2 * H * W)
    return frames.reshape(nf, 2, H, W)


def validate_events(ev: dict, H: int, W: int, where: str = "events") -> dict:
    """Events as read from a file, checked against the format: four 1-D numeric arrays t, x, y, p of one length;
    finite timestamps; whole-number coordinates inside the ``W`` x ``H`` sensor; polarity 0/1 (or -1/1).
    Returns them as int64 x, y, p and the original t; raises :class:`DatasetError` naming ``where``."""
    out = {}
    for k in ("t", "x", "y", "p"):
        if k not in ev:
            raise DatasetError(f"{where}: no {k!r} array (events need t, x, y, p)")
        a = np.asarray(ev[k])
        if a.ndim != 1:
            raise DatasetError(f"{where}: {k!r} must be a 1-D array, got shape {list(a.shape)}")
        if a.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: {k!r} must hold numbers, got dtype {a.dtype}")
        out[k] = a
    n = {k: len(v) for k, v in out.items()}
    if len(set(n.values())) != 1:
        raise DatasetError(f"{where}: event arrays differ in length ({', '.join(f'{k} {v}' for k, v in n.items())})")
    if out["t"].dtype.kind == "f" and not np.isfinite(out["t"]).all():
        raise DatasetError(f"{where}: {int((~np.isfinite(out['t'])).sum())} timestamp(s) are NaN/inf")
    for k in ("x", "y", "p"):
        a = out[k]
        if a.dtype.kind == "f":
            if not (np.isfinite(a).all() and (a == np.round(a)).all()):
                raise DatasetError(f"{where}: {k!r} holds non-integer values (e.g. {a[a != np.round(a)][:1]}); event "
                                   f"coordinates and polarities are whole numbers")
        out[k] = a.astype(np.int64)
    x, y, p = out["x"], out["y"], out["p"]
    if len(x) and (x.min() < 0 or x.max() >= W or y.min() < 0 or y.max() >= H):
        raise DatasetError(f"{where}: event coordinates outside the {W}x{H} sensor (x {x.min()}..{x.max()}, "
                           f"y {y.min()}..{y.max()})")
    if len(p) and not np.isin(p, (-1, 0, 1)).all():
        raise DatasetError(f"{where}: polarity values must be 0/1 (or -1/1), got {sorted(set(p.tolist()))[:6]}")
    return out


def read_frames_npz(path, lim: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Event frames saved as .npz (``frames`` or the first array: [T,C,H,W] or [B,T,C,H,W]; optional ``labels``
    [B]) as float32 [B,T,C,H,W] and int64 labels, checked: readable, not empty, finite, one label per sample."""
    path = Path(path)
    z = _np_load(path, "event frames (.npz)")
    if not hasattr(z, "files"):
        raise DatasetError(f"{path}: expected an .npz archive holding a 'frames' array")
    with z:
        if not z.files:
            raise DatasetError(f"{path}: the .npz archive is empty; expected a 'frames' array [T,C,H,W] or "
                               f"[B,T,C,H,W] (and optionally 'labels')")
        key = "frames" if "frames" in z.files else z.files[0]
        try:
            x, y = z[key], (z["labels"] if "labels" in z.files else None)
        except Exception as e:  # noqa: BLE001 - damaged member, object array
            if "allow_pickle" in str(e):
                raise DatasetError(f"{path}: refused: an array holds pickled Python objects, and event frames are "
                                   f"plain numeric arrays (nothing in it was run)") from None
            raise DatasetError(f"{path}: cannot read {key!r}: {type(e).__name__}: {' '.join(str(e).split())}") from None
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: {key!r} must hold numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or not x.size:
        raise DatasetError(f"{path}: expected event frames [T,C,H,W] or [B,T,C,H,W], got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise DatasetError(f"{path}: {key!r} holds NaN/inf values")
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise DatasetError(f"{path}: 'labels' must be {len(x)} integer(s), one per sample of {key!r}, got "
                               f"{y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    if lim:
        x, y = x[:lim], (y[:lim] if y is not None else None)
    return x, y


# ---------------------------------------------------------------------------------------------- readers
# Arrays are read with allow_pickle=False: an object array (a pickle inside a .npy/.npz) is refused, never run.
def _np_load(path: Path, what: str):
    from ..bounds import check_numpy_file

    try:  # a FIFO, a zip bomb or a header claiming more than the file holds: refused before numpy reads
        check_numpy_file(path, DatasetError)
    except PermissionError as e:
        raise DatasetError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DatasetError(f"{path}: refused: the file holds pickled Python objects, and {what} are plain "
                               f"numeric arrays (nothing in it was run)") from None
        raise DatasetError(f"{path}: cannot read {what} ({' '.join(str(e).split())})") from None
    except Exception as e:  # noqa: BLE001 - truncated zip (BadZipFile), EOF, permission, a directory...
        raise DatasetError(f"{path}: cannot read {what}: {type(e).__name__}: {' '.join(str(e).split()) or 'empty'}"
                           f" (truncated or not a NumPy file?)") from None


def read_npz_events(path: Path) -> dict:
    z = _np_load(path, "events (.npz with arrays t, x, y, p)")
    if not hasattr(z, "files"):
        raise DatasetError(f"{path}: expected an .npz archive with arrays t, x, y, p; it holds a single array")
    try:
        with z:
            missing = [k for k in ("t", "x", "y", "p") if k not in z.files]
            if missing:
                raise DatasetError(f"{path}: npz has no {missing} array(s) (found {z.files}); expected t, x, y, p")
            return {k: z[k] for k in ("t", "x", "y", "p")}
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged member, an object array
        if "allow_pickle" in str(e):
            raise DatasetError(f"{path}: refused: an array holds pickled Python objects, and events are plain "
                               f"numeric arrays (nothing in it was run)") from None
        raise DatasetError(f"{path}: cannot read events: {type(e).__name__}: {' '.join(str(e).split())}") from None


def read_tonic_npy(path: Path) -> dict:
    a = _np_load(path, "events (an (N, 4) array of x, y, p, t)")
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[1] != 4:
        raise DatasetError(f"{path}: expected an (N, 4) array of x, y, p, t(ms), got shape "
                           f"{getattr(a, 'shape', None)}")
    t = a[:, 3]
    if not np.issubdtype(t.dtype, np.number) or (t.dtype.kind == "f" and not np.isfinite(t).all()):
        raise DatasetError(f"{path}: timestamps must be finite numbers")
    return {"x": a[:, 0], "y": a[:, 1], "p": a[:, 2], "t": t.astype(np.int64) * 1000}


def read_aedat4(path: Path) -> dict:
    try:
        import aedat
    except ImportError as e:
        raise ImportError(f"reading {path} (.aedat4) needs the optional package `aedat`: pip install aedat") from e
    try:
        parts = [pkt["events"] for pkt in aedat.Decoder(str(path)) if "events" in pkt]
    except Exception as e:  # noqa: BLE001 - the decoder's own error types
        raise DatasetError(f"{path}: cannot read .aedat4 events ({type(e).__name__}: {e})") from None
    ev = np.concatenate(parts) if parts else np.zeros(0, dtype=[("t", "<u8"), ("x", "<u2"), ("y", "<u2"),
                                                                  ("on", "?")])
    pol = ev["on"] if "on" in ev.dtype.names else ev["p"]
    return {"t": ev["t"], "x": ev["x"], "y": ev["y"], "p": pol}


_READERS = {".npz": read_npz_events, ".npy": read_tonic_npy, ".aedat4": read_aedat4}


# ---------------------------------------------------------------------------------------------- dataset
class EventFrameDataset(Dataset):
    """Samples (files, labels) of events framed into ``[T, 2, H, W]`` counts, cached on disk.

    The cache folder name encodes everything that affects the frames (T, split rule, sensor size, format
    version, a hash of the file list), and each sample's cache file the size and modification time of its event
    file, so changing a parameter or replacing a file never serves stale frames. Writes are atomic.
    """

    def __init__(self, files: list[Path], labels: list[int], classes: list[str], T: int, sensor: tuple[int, int],
                 split_by: str = "number", resize: int | None = None, cache_dir: str | os.PathLike | None = None,
                 transform=None):
        if not files:
            raise DatasetError("no event files found")
        self.files, self.labels, self.classes = files, labels, classes
        self.T, (self.H, self.W), self.split_by, self.resize, self.transform = T, sensor, split_by, resize, transform
        self.cache = None
        if cache_dir is not None:
            key = hashlib.sha1("\n".join(str(f) for f in files).encode()).hexdigest()[:10]
            self.cache = Path(cache_dir) / (f"frames_v{FRAME_FORMAT_VERSION}_T{T}_{split_by}_{self.H}x{self.W}"
                                            f"_r{resize or 0}_{key}")
            try:
                self.cache.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                warnings.warn(f"frame cache {self.cache} cannot be created ({e}); frames are rebuilt each time",
                              stacklevel=2)
                self.cache = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def _read_cached(self, cached: Path) -> torch.Tensor | None:
        """A cached frame tensor, or None when there is none or it is not what this dataset writes (then it is
        rebuilt from the events)."""
        if not cached.is_file():
            return None
        side = self.resize or self.H, self.resize or self.W
        try:
            from ..bounds import check_numpy_file

            check_numpy_file(cached)
            a = np.load(cached, allow_pickle=False)
        except Exception:  # noqa: BLE001 - damaged or foreign cache file
            return None
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (self.T, 2, *side)
                and np.isfinite(a).all()):
            return None
        return torch.from_numpy(a)

    def _write_cache(self, cached: Path, out: torch.Tensor) -> None:
        """Best effort: a cache that cannot be written (read-only folder, full disk) only costs time."""
        tmp = temp_path(cached)
        try:
            with open(tmp, "wb") as f:
                np.save(f, out.numpy())
            os.replace(tmp, cached)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not getattr(self, "_cache_warned", False):
                self._cache_warned = True
                warnings.warn(f"frame cache {self.cache} not written ({e}); frames are rebuilt each time",
                              stacklevel=2)

    def _cache_file(self, i: int) -> Path | None:
        """Sample ``i``'s cache file, named by its event file's path, size and modification time: a replaced or
        edited event file gets a new name, so its stale frames are never served."""
        try:
            st = os.stat(self.files[i])
        except OSError:
            return None  # the reader gives the message
        stamp = hashlib.sha1(f"{self.files[i]}\n{st.st_size}\n{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return self.cache / f"{i}_{stamp}.npy"

    def frames(self, i: int) -> torch.Tensor:
        cached = self._cache_file(i) if self.cache else None
        if cached is not None:
            hit = self._read_cached(cached)
            if hit is not None:
                return hit
        path = self.files[i]
        reader = _READERS.get(path.suffix)
        if reader is None:
            raise DatasetError(f"{path}: unknown event file type (expected .npz, .npy or .aedat4)")
        ev = validate_events(reader(path), self.H, self.W, str(path))
        order = np.argsort(ev["t"], kind="stable")
        ev = {k: v[order] for k, v in ev.items()}
        try:
            fr = integrate_frames(ev, self.T, self.H, self.W, self.split_by)
        except ValueError as e:
            raise DatasetError(f"{path}: {e}") from e
        out = torch.from_numpy(fr)
        if self.resize and self.resize != self.H:
            out = F.interpolate(out, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if cached is not None:
            for old in cached.parent.glob(f"{i}_*.npy"):  # frames of an earlier version of this event file
                if old != cached:
                    try:
                        old.unlink()
                    except OSError:
                        pass
            self._write_cache(cached, out)
        return out

    def __getitem__(self, i):
        x = self.frames(i)
        return (self.transform(x) if self.transform else x), int(self.labels[i])


class TETFolderDataset(Dataset):
    """Official ``cifar10-dvs-tet`` layout: ``root/{train,test}/<index>.pt`` with (data, target), time last."""

    def __init__(self, root: Path, split: str, size: int = 64, transform=None):
        d = root / ("train" if split == "train" else "test")
        self.files = sorted(d.glob("*.pt"), key=lambda p: (len(p.stem), p.stem)) if d.is_dir() else []
        if not self.files:
            raise DatasetError(f"cifar10-dvs-tet: no <index>.pt files in {d}; expected {root}/{{train,test}}/0.pt, "
                               f"1.pt, ... each holding (data [C,H,W,T] in [0,1], target)")
        self.size, self.transform, self.classes = size, transform, CIFAR10_CLASSES

    @property
    def num_classes(self) -> int:
        return 10

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from ..checkpoint import CheckpointError, read_checkpoint_file

        path = self.files[i]
        try:  # weights_only: tensors and plain containers only, no pickled code runs
            obj = read_checkpoint_file(path)
        except CheckpointError as e:
            raise DatasetError(f"cifar10-dvs-tet sample: {e}") from None
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
            raise DatasetError(f"{path}: expected a (data, target) pair, got {type(obj).__name__}")
        data, target = obj
        if not isinstance(data, torch.Tensor) or data.ndim != 4 or data.is_complex() or data.dtype == torch.bool:
            raise DatasetError(f"{path}: data must be a real tensor [C,H,W,T], got "
                               f"{getattr(data, 'dtype', type(data).__name__)} {list(getattr(data, 'shape', []))}")
        if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
            target = target.item()
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < 10:
            raise DatasetError(f"{path}: target must be a class index 0..9, got {target!r}")
        x = data.to(torch.float32).movedim(-1, 0)  # [T, C, H, W]
        if not torch.isfinite(x).all():
            raise DatasetError(f"{path}: data holds NaN/inf values")
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (self.transform(x) if self.transform else x), target


def _label_dirs(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_dir()), key=lambda p: (not p.name.isdigit(),
                                                                          int(p.name) if p.name.isdigit() else 0,
                                                                          p.name))


def gesture(root: str | None, split: str, T: int, cache_dir=None, split_by="number", transform=None):
    root_p = Path(root or "./data/DVSGesture")
    sj = root_p / "events_np" / ("train" if split == "train" else "test")
    tonic = root_p / "DVSGesture" / ("ibmGestureTrain" if split == "train" else "ibmGestureTest")
    files, labels = [], []
    def label(name: str, where: Path) -> int:
        if not name.isdigit():
            raise DatasetError(f"DVS128 Gesture: {where} is not named by a class index 0..10")
        return int(name)

    if sj.is_dir():
        for d in _label_dirs(sj):
            for f in sorted(d.glob("*.npz")):
                files.append(f), labels.append(label(d.name, d))
    elif tonic.is_dir():
        for d in sorted(p for p in tonic.iterdir() if p.is_dir()):
            for f in sorted(d.glob("*.npy")):
                files.append(f), labels.append(label(f.stem, f))
    if not files:
        raise DatasetError(f"DVS128 Gesture {split} events not found under {root_p}. Expected either the "
                           f"spikingjelly layout {sj}/<label 0-10>/*.npz (arrays t, x, y, p) or the tonic layout "
                           f"{tonic}/user<NN>_<lighting>/<label>.npy. This tool does not download data.")
    bad = [lab for lab in labels if not 0 <= lab < 11]
    if bad:
        raise DatasetError(f"DVS128 Gesture: label {bad[0]} outside 0..10 under {root_p}")
    return EventFrameDataset(files, labels, [str(i) for i in range(11)], T, (128, 128), split_by,
                             cache_dir=cache_dir or root_p / "frames_cache", transform=transform)


def cifar10_dvs(root: str | None, split: str, T: int, cache_dir=None, split_by="number", train_ratio=0.9,
                transform=None):
    root_p = Path(root or "./data/cifar10-dvs")
    candidates = [root_p / "events_np", root_p / "CIFAR10DVS", root_p]
    base = next((c for c in candidates if c.is_dir() and any((c / n).is_dir() for n in CIFAR10_CLASSES)), None)
    if base is None:
        raise DatasetError(f"CIFAR10-DVS events not found under {root_p}. Expected {root_p}/events_np/<class>/*.npz "
                           f"(spikingjelly) or {root_p}/CIFAR10DVS/<class>/*.aedat4 (tonic), class folders "
                           f"{', '.join(CIFAR10_CLASSES)}. This tool does not download data.")
    files, labels = [], []
    for c, name in enumerate(CIFAR10_CLASSES):
        fs = sorted(f for f in (base / name).glob("*") if f.suffix in (".npz", ".aedat4", ".npy"))
        k = math.ceil(train_ratio * len(fs))  # official split: first ceil(0.9 n) of each class train, in order
        sel = fs[:k] if split == "train" else fs[k:]
        files += sel
        labels += [c] * len(sel)
    return EventFrameDataset(files, labels, CIFAR10_CLASSES, T, (128, 128), split_by, resize=64,
                             cache_dir=cache_dir or root_p / "frames_cache", transform=transform)
