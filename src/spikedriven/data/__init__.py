"""Datasets, read from their real on-disk formats; nothing is ever downloaded.

    info.py      DATASET_INFO: classes, channels, size, mean/std, event or not (no file access, light)
    factory.py   create_dataset(name, root, split, T=...)
    static.py    Fashion-MNIST (IDX), CIFAR-10/100 (python pickles, restricted unpickler), digits, ImageFolder
    folder.py    your own images (D/train/<class>/*, D/val/<class>/*): classes, channels, size, mean/std read
    events.py    DVS128 Gesture, CIFAR10-DVS (npz / npy / aedat4), framing into T frames, on-disk frame cache
    simulate.py  SIMULATED event streams from static images (N-MNIST-style saccades)
    samples.py   sample batches for a model outside training (energy, pictures, checks)

The names below are loaded on first use, so that ``spikedriven.data.info`` stays light (no torch/numpy/PIL).
"""
from __future__ import annotations

from importlib import import_module

from .info import DATASET_ALIASES, DATASET_INFO, canonical_name, dataset_normalisation, is_event, uses_erode

_LAZY = {"create_dataset": "factory", "DatasetError": "static", "read_idx": "static", "integrate_frames": "events",
         "read_npz_events": "events", "read_tonic_npy": "events", "EventFrameDataset": "events",
         "image_to_events": "simulate", "write_simulated_dataset": "simulate"}

__all__ = ["DATASET_INFO", "DATASET_ALIASES", "canonical_name", "dataset_normalisation", "is_event", "uses_erode",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'spikedriven.data' has no attribute {name!r}")
