"""One rule for every file spikedriven writes (checkpoints, run folders, reports, pictures, converted files).

A command calls :func:`check_output` (or :func:`check_outputs`) for each output *before* it does any work, then
writes through :func:`atomic_write` / :func:`atomic_write_bytes` / :func:`atomic_write_text`:

- ``check_output(path, inputs=(...), overwrite=False, option="--csv")`` returns ``Path(path)`` or raises
  :class:`OutputError` (one line) when the output is an input of the same command (same file, also through a
  link), a directory, a device, a FIFO or a socket (refused even with ``overwrite``), or an existing file when
  ``overwrite`` is false (the commands' ``--overwrite``).
- ``atomic_write(path, write_fn)``: ``write_fn(tmp)`` writes a temporary file in the target's folder, which is
  fsynced and renamed over ``path`` (``os.replace``): a reader sees the old file or the new one, never half of
  one. The temporary file gets the permissions ``open()`` gives (``0666`` minus the umask). A failed write (a full
  disk, a quota, a size limit) removes the temporary file, leaves ``path`` as it was and raises
  :class:`OutputError` saying why. ``atomic_write_bytes(path, data)`` and ``atomic_write_text(path, text)`` are
  the same for ready content. A target that exists and is not a regular file (or a link) is never replaced.
- Temporary files are named ``.spikedriven-<name>.<16 hex digits>.tmp`` (:func:`temp_path`);
  :func:`remove_stale_temp_files` deletes only names of exactly that form, so it never deletes a user's file.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

__all__ = ["OutputError", "TEMP_PREFIX", "check_output", "check_outputs", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "temp_path", "is_temp_name", "remove_stale_temp_files"]

TEMP_PREFIX = ".spikedriven-"
_TEMP_RE = re.compile(r"^\.spikedriven-.+\.[0-9a-f]{16}\.tmp$")


class OutputError(RuntimeError):
    """An output that may not be written there, or a write that failed (the previous file is unchanged)."""


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file); for outputs and bounded reads alike."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a pipe or FIFO (a process substitution such as <(...) is one)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_output(path, inputs=(), overwrite: bool = False, option: str = "output") -> Path:
    """``Path(path)`` when the command may write it, else :class:`OutputError` (see the module docstring).
    ``inputs``: the files the command reads (None entries are skipped); ``option`` names the output in the
    message (``--csv``, ``DST``)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{option} {p}: cannot be written ({e.strerror or e})") from None
    if st is None:
        return p
    kind = file_kind(st.st_mode)
    if kind:
        raise OutputError(f"{option} {p} is {kind}: an output is written as a regular file and never replaces one "
                          f"(give a file name)")
    for inp in inputs:
        if inp is None:
            continue
        try:
            same = os.path.samefile(p, inp)
        except OSError:
            continue
        if same:
            raise OutputError(f"{option} {p} is also an input of this command ({inp}): writing it would replace "
                              f"what was read; choose another file name")
    if not overwrite:
        raise OutputError(f"{option} {p} already exists; choose another name, or add --overwrite to replace it "
                          f"(atomically)")
    return p


def check_outputs(outputs: dict, inputs=(), overwrite: bool = False) -> None:
    """:func:`check_output` for each ``{option: path}`` (None paths skipped), and no two outputs on one path."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_output(path, inputs, overwrite, option)
        key = os.path.realpath(path)
        if key in seen:
            raise OutputError(f"{option} and {seen[key]} name the same file {path}: give each output its own name")
        seen[key] = option


def temp_path(path) -> Path:
    """The temporary file a write of ``path`` goes through: ``.spikedriven-<name>.<16 hex>.tmp`` beside it."""
    path = Path(path)
    return path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(8)}.tmp"


def is_temp_name(name: str) -> bool:
    """True for the names :func:`temp_path` makes (and only those)."""
    return bool(_TEMP_RE.match(name))


def _first_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_failure(path: Path, e: BaseException) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    err = getattr(e, "errno", None)
    if err in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why = "the disk is full (no space left on device)"
    elif err == errno.EFBIG:
        why = "the file is larger than this process may write (file size limit)"
    elif err in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"permission denied ({_first_line(e)})"
    elif isinstance(e, OSError):
        why = _first_line(e)
    elif "enforce fail" in str(e) or "unexpected pos" in str(e) or "PytorchStreamWriter" in str(e):
        why = "the write failed part-way (the disk may be full or the file size limit reached)"
    else:
        why = _first_line(e)
    space = f"; {free / 2**20:.1f} MiB free there" if free is not None else ""
    return f"could not write {path}: {why}{space}; the previous {path.name} (if any) is unchanged"


def atomic_write(path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` and atomically move the result to ``path`` (see the module docstring)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(_write_failure(path, e)) from e
    try:
        kind = None if stat.S_ISLNK(os.lstat(path).st_mode) else file_kind(os.lstat(path).st_mode)
    except OSError:
        kind = None
    if kind:
        raise OutputError(f"could not write {path}: it is {kind}, and an output never replaces one")
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = os.stat(tmp).st_mode & 0o777  # 0666 minus the umask
        write_fn(str(tmp))
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that re-creates the file (safetensors: 0600)
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, Exception) and not isinstance(e, OutputError):
            raise OutputError(_write_failure(path, e)) from e
        raise
    try:  # make the rename itself durable (best effort: not every filesystem allows it)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_bytes(path, data) -> None:
    """Write ``data`` (bytes) to ``path`` atomically; a callable ``data`` is a ``write_fn`` (:func:`atomic_write`)."""
    if callable(data):
        return atomic_write(path, data)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def remove_stale_temp_files(folder) -> list[str]:
    """Delete the temporary files of :func:`atomic_write` a killed process left in ``folder`` (names of the
    :func:`temp_path` form only). Only call this on a folder no other process writes to (a locked run folder).
    Returns the names removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if is_temp_name(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p.name)
            except OSError:
                pass
    return removed
