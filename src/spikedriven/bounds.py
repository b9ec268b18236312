"""Bounded reads: what the package reads from a user's file, or builds from a user's numbers, has a budget checked
before the work is done.

- a path to read must be a regular file: a FIFO, a process substitution (``/dev/fd/N``, a pipe), a device or a
  socket is refused from ``os.stat`` alone, so that reading never blocks or never ends (:func:`regular_file`);
- a YAML file or pickled metadata is walked as the tree it stands for, counting a shared reference (a YAML alias,
  a pickle memo) every time it is reached: "billion laughs" files stop at :data:`MAX_TREE_NODES` values
  (:func:`check_tree`);
- an ``.npy``/``.npz`` is checked from its headers before any array is read: the zip directory's uncompressed
  sizes (and an .npy's array) against :func:`max_array_bytes`, and every ``.npy`` header's shape against the bytes really there
  (:func:`check_numpy_file`);
- a model's first activation is estimated before a forward pass at a user's size, and a model's parameters
  before it is built from a user's sizes, against the memory this machine has (:func:`check_fits_in_memory`).

Each refusal is a one-line message naming the file or the option, what was found and the limit.
"""
from __future__ import annotations

import argparse
import math
import os
import stat
import zipfile
from pathlib import Path

from .outputs import file_kind

__all__ = ["MAX_TREE_NODES", "MAX_TREE_DEPTH", "MAX_YAML_BYTES", "regular_file", "check_tree", "max_array_bytes",
           "check_numpy_file", "available_memory", "check_fits_in_memory", "forward_bytes", "model_param_bytes"]

MAX_TREE_NODES = 200_000  # values in a YAML file or a checkpoint's metadata, shared references counted each time
MAX_TREE_DEPTH = 100
MAX_YAML_BYTES = 4 * 2**20
_DEFAULT_ARRAY_BYTES = 2 * 2**30


def regular_file(path: str | os.PathLike, what: str = "the file", error: type[Exception] = ValueError) -> int:
    """The size of ``path`` when it is a regular file (symlinks followed); a pipe, FIFO, device or socket raises
    ``error`` without opening it (opening a FIFO blocks until a writer comes). A missing path raises
    FileNotFoundError; a directory is left to the caller (returns -1)."""
    st = os.stat(path)  # FileNotFoundError / PermissionError go to the caller
    if stat.S_ISDIR(st.st_mode):
        return -1
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is {file_kind(st.st_mode)}, not a regular file: {what} is read from a regular file only "
                    f"(save it to a file first)")
    return st.st_size


def check_tree(obj, what: str, max_nodes: int = MAX_TREE_NODES, max_depth: int = MAX_TREE_DEPTH,
               error: type[Exception] = ValueError) -> int:
    """Count the values ``obj`` stands for when expanded (a container reached twice counts twice, a string counts
    once per 64 characters); raise ``error`` past ``max_nodes`` values or ``max_depth`` levels. Tensors and arrays
    count as one value each. Returns the count."""
    n, stack = 0, [(obj, 0)]
    while stack:
        o, depth = stack.pop()
        n += 1 + (len(o) // 64 if isinstance(o, (str, bytes)) else 0)
        if n > max_nodes:
            raise error(f"{what} stands for more than {max_nodes:,} values once its shared references (YAML "
                        f"aliases, pickle memos) are expanded: refused (a \"billion laughs\" file?)")
        if depth > max_depth:
            raise error(f"{what} is nested more than {max_depth} levels deep: refused")
        if isinstance(o, argparse.Namespace):
            o = vars(o)
        if isinstance(o, dict):
            stack.extend((k, depth + 1) for k in o)
            stack.extend((v, depth + 1) for v in o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in o)
    return n


def max_array_bytes() -> int:
    """Budget for the arrays of one .npy/.npz file: ``SPIKEDRIVEN_MAX_ARRAY_BYTES`` (bytes), else 2 GiB or half
    the memory available, whichever is smaller."""
    env = os.environ.get("SPIKEDRIVEN_MAX_ARRAY_BYTES")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return min(_DEFAULT_ARRAY_BYTES, available_memory() // 2)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**28 else f"{n / 2**20:.3g} MiB"


def _npy_claim(f, size: int, where: str, error) -> int:
    """Bytes an .npy header in the open file ``f`` claims; refused when the file holds fewer (``size``)."""
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(f)
        shape, _order, dtype = (npf.read_array_header_1_0(f) if version == (1, 0) else
                                npf.read_array_header_2_0(f))
    except Exception:  # noqa: BLE001 - not an .npy header: numpy's own reader says so later
        return 0
    count = math.prod(shape)
    claim = count * dtype.itemsize
    have = size - f.tell()
    if dtype.hasobject:
        return 0  # refused later by allow_pickle=False
    if claim > have:
        raise error(f"{where}: its header claims an array of shape {tuple(shape)} ({dtype}, {_gib(claim)}) but the "
                    f"file holds {have:,} bytes of data: a damaged or hostile file, refused before reading")
    return claim


def check_numpy_file(path: str | os.PathLike, error: type[Exception] = ValueError) -> None:
    """Check an ``.npy``/``.npz`` from its headers before numpy reads it: a regular file; for a zip archive the
    sum of its members' uncompressed sizes (zip directory) within :func:`max_array_bytes` and every member's
    .npy header within its member's size; for an .npy, the header's shape within the file's bytes."""
    size = regular_file(path, "an array file", error)
    if size < 0:
        return
    limit = max_array_bytes()
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                total = sum(i.file_size for i in infos)
                if total > limit:
                    raise error(f"{path}: the archive expands to {_gib(total)} ({len(infos)} member(s), "
                                f"{_gib(size)} on disk), more than the {_gib(limit)} allowed for one file "
                                f"(SPIKEDRIVEN_MAX_ARRAY_BYTES): refused before reading")
                for i in infos:
                    if i.filename.endswith(".npy"):
                        with z.open(i) as f:
                            _npy_claim(f, i.file_size, f"{path} ({i.filename})", error)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError):
            return  # a damaged archive: numpy's reader gives its own message
        return
    with open(path, "rb") as f:
        claim = _npy_claim(f, size, str(path), error)
    if claim > limit:
        raise error(f"{path}: the array takes {_gib(claim)}, more than the {_gib(limit)} allowed for one file "
                    f"(SPIKEDRIVEN_MAX_ARRAY_BYTES): refused before reading")


# ------------------------------------------------------------------------------------------- memory
def available_memory() -> int:
    """Bytes of memory this process can still get: MemAvailable of /proc/meminfo, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def forward_bytes(model, batch: int, size: int) -> int:
    """A lower bound of the memory a forward pass takes: the input repeated over T time steps and the output of
    the first convolution (the largest activation of these models), in float32."""
    from torch import nn

    T = int(getattr(model, "T", 1) or 1)
    cin = int(getattr(model, "in_channels", 3) or 3)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    out = 0
    if first is not None:
        s = max(1, int(first.stride[0]))
        out = first.out_channels * math.ceil(size / s) ** 2
    return 4 * batch * T * (cin * size * size + out)


def model_param_bytes(kwargs: dict) -> int:
    """A lower bound of a Spike-driven Transformer's parameter memory from its constructor arguments: per block
    (4 + 2 x mlp_ratio) D^2 weights, float32. 0 when the sizes are not plain numbers (the constructor checks)."""
    try:
        d = kwargs.get("embed_dim", 0)
        d = max(d) if isinstance(d, (list, tuple)) else d
        depth = kwargs.get("depth", 1)
        depth = sum(depth) if isinstance(depth, (list, tuple)) else depth
        mlp = float(kwargs.get("mlp_ratio", 4) or 0)
        k = int(kwargs.get("num_classes", 0) or 0)
        return int(4 * (max(int(depth), 1) * (4 + 2 * mlp) * int(d) ** 2 + int(d) * k))
    except (TypeError, ValueError, OverflowError):
        return 0


def check_fits_in_memory(need: int, what: str, error: type[Exception] = ValueError) -> None:
    """Refuse ``what`` (e.g. "a forward pass at --img-size 20000") when ``need`` bytes exceed what is available."""
    have = available_memory()
    if need > have:
        raise error(f"{what} needs at least {_gib(need)} of memory and {_gib(have)} is available: refused "
                    f"before allocating (use smaller sizes)")
