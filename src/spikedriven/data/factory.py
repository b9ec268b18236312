"""``create_dataset(name, root, split, T=...)``: a dataset from its files on disk. Nothing is ever downloaded.

Static datasets return ``(PIL image, label)`` before ``transform``; event datasets return
``(float32 [T, 2, H, W] event counts, label)``.
"""
from __future__ import annotations

from pathlib import Path

from .events import EventFrameDataset, TETFolderDataset, cifar10_dvs, gesture
from .folder import LAYOUT, FolderImages
from .info import DATASET_INFO, canonical_name
from .simulate import write_simulated_dataset
from .images import image_folder
from .static import cifar, digits, fashion_mnist

__all__ = ["create_dataset"]


def _split(split: str) -> str:
    s = split.lower()
    if s in ("train", "training"):
        return "train"
    if s in ("test", "val", "validation", "eval"):
        return "test"
    raise ValueError(f"split must be 'train' or 'test'/'val', got {split!r}")


def create_dataset(name: str, root: str | None = None, split: str = "train", *, T: int | None = None,
                   transform=None, download: bool = False, **kwargs):
    """Build a dataset from files on disk. ``T`` (frames) is required for event datasets."""
    name = canonical_name(name)
    if name not in DATASET_INFO:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASET_INFO))}")
    if download:
        raise RuntimeError(f"spikedriven never downloads data; place the {name} files under a folder and pass it "
                           f"as root (the error for a missing folder shows the expected layout)")
    split = _split(split)
    info = DATASET_INFO[name]
    if info["is_event"] and (T is None or T < 1):
        raise ValueError(f"{name} is an event dataset: pass T (number of frames), e.g. T=16")
    if name == "fashion-mnist":
        return fashion_mnist(root, split, transform)
    if name == "digits":
        return digits(split, transform, **kwargs)
    if name in ("cifar10", "cifar100"):
        return cifar(name, root, split, transform)
    if name == "imagenet":
        return image_folder(root, split, transform)
    if name == "imagefolder":
        if not root:
            raise ValueError(f"--dataset imagefolder needs --data-dir: a folder laid out as {LAYOUT}")
        return FolderImages(root, split, kwargs.get("classes"), transform)
    if name == "gesture":
        return gesture(root, split, T, transform=transform, **kwargs)
    if name == "cifar10-dvs":
        return cifar10_dvs(root, split, T, transform=transform, **kwargs)
    if name == "cifar10-dvs-tet":
        return TETFolderDataset(Path(root or "./data/cifar10-dvs-tet"), split, transform=transform)
    # sim-fashion-mnist-dvs: generated once from Fashion-MNIST, then read like any DVS folder
    return _simulated_fmnist(root, split, T, transform, **kwargs)


def _simulated_fmnist(root, split, T, transform, n_per_split: int | None = None, fmnist_root: str | None = None):
    out = Path(root or "./data/sim-fashion-mnist-dvs")
    d = out / "events_np" / split
    if not d.is_dir():
        src = fashion_mnist(fmnist_root, split)
        n = n_per_split or len(src)
        write_simulated_dataset(src.images[:n], src.labels[:n], out, split, sensor=34, seed=0 if split == "train"
                                else 1)
    files, labels = [], []
    for ld in sorted((p for p in d.iterdir() if p.is_dir()), key=lambda p: int(p.name)):
        fs = sorted(ld.glob("*.npz"), key=lambda p: int(p.stem))
        files += fs
        labels += [int(ld.name)] * len(fs)
    return EventFrameDataset(files, labels, [str(i) for i in range(10)], T, (34, 34), "number",
                             cache_dir=out / "frames_cache", transform=transform)
