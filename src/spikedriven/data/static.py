"""Static image datasets read from their real on-disk formats (nothing is ever downloaded).

Every dataset returns ``(PIL.Image, int label)`` before ``transform``; ``transform`` (if given) is applied to
the image. Missing or malformed files raise :class:`DatasetError` naming the path and the expected layout.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class DatasetError(FileNotFoundError):
    """Dataset files are missing or malformed; the message names the path and the expected layout.

    Raised inside a DataLoader worker, it reaches the main process with the original one-line message (the
    worker's "Caught DatasetError in DataLoader worker process N ... Original Traceback" wrapper is removed)."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and "Original Traceback" in args[0]:
            args = (worker_error_message(args[0]),)
        super().__init__(*args)


def worker_error_message(text: str) -> str:
    """The original message inside a DataLoader worker's re-raised error text (its traceback's last exception)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        head, sep, rest = lines[i].partition(": ")
        if sep and not lines[i].startswith(" ") and head.rsplit(".", 1)[-1].endswith(("Error", "Exception")):
            return "\n".join([rest] + lines[i + 1:]).strip()
    return text


class ArrayImageDataset(Dataset):
    """Images held as a uint8 array ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (RGB) with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str], transform=None):
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes, self.transform = images, labels.astype(np.int64), classes, transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L" if self.images.ndim == 3 else "RGB")
        return (self.transform(img) if self.transform else img), int(self.labels[i])


# ---------------------------------------------------------------------------------------------- IDX (MNIST family)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip'd or raw): magic 0x0000 <dtype> <ndim>, big-endian dims, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read IDX file ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic {data[:4].hex() if data else 'empty'}; "
                           f"expected 0000 08 <ndim> for uint8)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != need:
        raise DatasetError(f"{path}: IDX payload is {len(body)} bytes, header {dims} needs {need} (truncated?)")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"


def _find_idx(root: Path, stem: str) -> Path | None:
    for d in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def fashion_mnist(root: str | None, split: str, transform=None) -> ArrayImageDataset:
    root_p = Path(root or FASHION_DEFAULT_ROOT)
    prefix = "train" if split == "train" else "t10k"
    files = {k: _find_idx(root_p, f"{prefix}-{k}") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")}
    missing = [k for k, v in files.items() if v is None]
    if missing:
        raise DatasetError(
            f"Fashion-MNIST {split} files not found under {root_p} (missing {prefix}-{missing[0]}[.gz]). Expected "
            f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz] directly in the folder or in FashionMNIST/raw/. "
            f"On Debian/Ubuntu: `apt-get install dataset-fashion-mnist` installs them in {FASHION_DEFAULT_ROOT}.")
    images = read_idx(files["images-idx3-ubyte"])
    labels = read_idx(files["labels-idx1-ubyte"])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetError(f"{files['images-idx3-ubyte']}: Fashion-MNIST images are uint8 [N, 28, 28], got "
                           f"{images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(f"{files['labels-idx1-ubyte']}: Fashion-MNIST labels are uint8 [N], got {labels.dtype} "
                           f"{list(labels.shape)}")
    if len(images) != len(labels):
        raise DatasetError(f"{files['images-idx3-ubyte']}: {len(images)} images but {len(labels)} labels")
    if not len(images):
        raise DatasetError(f"{files['images-idx3-ubyte']}: the file holds no image (N = 0)")
    if labels.max() >= 10:
        raise DatasetError(f"{files['labels-idx1-ubyte']}: label {labels.max()} out of range 0..9")
    return ArrayImageDataset(np.ascontiguousarray(images), labels, FASHION_CLASSES, transform)


# ---------------------------------------------------------------------------------------------- digits (embedded)
def digits(split: str, transform=None, test_fraction: float = 0.2, seed: int = 0) -> ArrayImageDataset:
    """scikit-learn's 8x8 UCI digits (shipped inside the wheel), 0..16 scaled to 0..255, stratified split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_idx.extend(rng.permutation(idx)[: int(round(len(idx) * test_fraction))])
    mask = np.zeros(len(y), bool)
    mask[test_idx] = True
    sel = mask if split == "test" else ~mask
    return ArrayImageDataset(x[sel], y[sel], [str(i) for i in range(10)], transform)


# ---------------------------------------------------------------------------------------------- CIFAR (pickle)
# The CIFAR "python version" release is a set of pickles of dicts holding bytes, lists of ints/bytes and one uint8
# numpy array. Plain ``pickle.load`` would run whatever a crafted file asks for (``__reduce__`` -> os.system), so
# the unpickler resolves exactly the globals that numpy needs to rebuild an array (old and new module paths,
# protocols 2 to 5) and ``_codecs.encode`` (how protocol 2 writes bytes from Python 3); any other global is refused.
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class UnsafePickleError(DatasetError):
    """A data pickle asked for a Python object outside the dataset format's allowlist (nothing was run)."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"it asks for {module}.{name}, and the CIFAR format holds only dicts, lists, "
                                f"bytes and numpy arrays (refused; nothing in the file was run)")


def _unpickle(path: Path) -> dict:
    """A CIFAR batch file read with the restricted unpickler (no code in the file is ever run)."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: not a CIFAR batch: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle
        raise DatasetError(f"{path}: cannot read CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: a CIFAR batch is a dict, this file holds a {type(obj).__name__}")
    return obj


def cifar(name: str, root: str | None, split: str, transform=None) -> ArrayImageDataset:
    root_p = Path(root or "./data")
    if name == "cifar10":
        base, files, key = "cifar-10-batches-py", ([f"data_batch_{i}" for i in range(1, 6)] if split == "train"
                                                    else ["test_batch"]), b"labels"
        meta, meta_key = "batches.meta", b"label_names"
    else:
        base, files, key = "cifar-100-python", ["train" if split == "train" else "test"], b"fine_labels"
        meta, meta_key = "meta", b"fine_label_names"
    d = next((p for p in (root_p / base, root_p) if all((p / f).is_file() for f in files)), None)
    if d is None:
        raise DatasetError(f"{name} {split} files not found under {root_p}. Expected the python release "
                           f"layout {root_p}/{base}/{{{','.join(files)}}} (extract cifar-*-python.tar.gz there); "
                           f"this tool does not download data.")
    n_cls = 10 if name == "cifar10" else 100
    xs, ys = [], []
    for f in files:
        b = _unpickle(d / f)
        if b"data" not in b or key not in b:
            raise DatasetError(f"{d / f}: missing b'data' or {key!r} entry (keys: {sorted(b)[:6]})")
        data, labels = b[b"data"], b[key]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            got = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
            raise DatasetError(f"{d / f}: b'data' must be a uint8 array (pixel values 0..255), got {got}")
        if not isinstance(labels, (list, tuple, np.ndarray)):
            raise DatasetError(f"{d / f}: {key!r} must be a list of ints, got {type(labels).__name__}")
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DatasetError(f"{d / f}: expected data [N, 3072] with N labels, got {data.shape}, {len(labels)}")
        try:
            y = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise DatasetError(f"{d / f}: {key!r} must be a list of ints") from None
        if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= n_cls)):
            raise DatasetError(f"{d / f}: labels must be ints in 0..{n_cls - 1}, got values "
                               f"{int(y.min())}..{int(y.max())}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(y)
    classes = [str(i) for i in range(n_cls)]
    if (d / meta).is_file():
        names = _unpickle(d / meta).get(meta_key)
        if isinstance(names, list) and len(names) == n_cls:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    return ArrayImageDataset(np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), classes, transform)
