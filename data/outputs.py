"""Writing a command's output without ever losing what the user already has.

Every command that writes a store, file or run directory goes through these helpers:

- :func:`check_output` runs before anything is read or written. It refuses an output that
  equals, contains or lies inside one of the inputs (compared both as written and with symlinks
  resolved, so ``convert D/in.zarr D --force`` cannot delete its own source), an output that
  exists without ``--force``, and a location that cannot be written (a read-only folder, a
  parent that is a file) - each as one :class:`UserError` naming the paths.
- :func:`staging_dir` gives the sibling path ``.NAME.partial`` to build a replacement in, and
  :func:`publish` swaps it in only when complete: with Linux's atomic ``RENAME_EXCHANGE`` where
  the file system has it (a crash at any instant leaves the old or the new output at NAME),
  else old aside, new in, old deleted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from data.errors import UserError


def is_url(path: str | Path) -> bool:
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _local(path: str | Path) -> str:
    return str(path).removeprefix("file://")


def _forms(path: str | Path) -> set[Path]:
    """The path as written (absolute) and with every symlink resolved."""
    s = _local(path)
    return {Path(os.path.abspath(s)), Path(os.path.realpath(s))}


def overlap(out: str | Path, other: str | Path) -> str | None:
    """How ``out`` overlaps ``other`` ('is', 'contains', 'lies inside'), or None."""
    if is_url(out) or is_url(other):
        return None
    for a in _forms(out):
        for b in _forms(other):
            if a == b:
                return "is"
            if b.is_relative_to(a):
                return "contains"
            if a.is_relative_to(b):
                return "lies inside"
    return None


def check_output(
    out: str | Path,
    inputs: Iterable[str | Path] = (),
    *,
    force: bool | None = None,
    what: str = "output",
) -> None:
    """Refuse ``out`` before any work when writing it could lose data or cannot succeed.

    ``force`` False refuses an existing ``out``; None leaves that to the caller (e.g.
    handoff-collect appends to an existing store).
    """
    if is_url(out):
        return
    for src in inputs:
        how = overlap(out, src)
        if how:
            raise UserError(
                f"{what} {out} {how} the input {src}; writing it would change or delete the "
                "input - give a path apart from every input"
            )
    path = Path(_local(out))
    if force is False and os.path.lexists(path):
        raise UserError(f"{path} already exists; pass --force to overwrite it")
    check_writable(path)


def check_writable(path: Path) -> None:
    """Refuse a location where ``path`` cannot be created: its nearest existing ancestor must be
    a folder that really takes a new file (a probe file is made and removed: permission bits
    say nothing for root, and a read-only mount only shows when written)."""
    folder = Path(os.path.abspath(path)).parent
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.probe-")
    except OSError as e:
        raise UserError(
            f"cannot write {path}: {e.strerror or e} ({folder}); choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(probe)


def staging_dir(dst: Path) -> Path:
    """The sibling path ``.NAME.partial`` to build an output in; renamed into place when done.

    Its folder is created (DST may name folders that do not exist yet); a stale staging path
    left by a killed run is removed.
    """
    tmp = dst.with_name(f".{dst.name}.partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(tmp):
        remove(tmp)
    return tmp


def staging_if_exists(dst: str | Path) -> Path | None:
    """A staging path when something is at ``dst`` already (an overwrite), else None: a new
    output is built in place (an interrupted run then keeps what it finished), an existing one
    is replaced only when the new one is complete."""
    if is_url(dst) or not os.path.lexists(_local(dst)):
        return None
    return staging_dir(Path(_local(dst)))


def remove(path: str | Path) -> None:
    """Delete a file, link or folder (a link is removed, never what it points to)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        p.unlink()


def publish(tmp: Path, dst: Path) -> None:
    """Move a finished output from ``tmp`` to ``dst``, replacing what is there only now."""
    dst = Path(dst)
    if not os.path.lexists(dst):
        os.replace(tmp, dst)
        return
    if _exchange(tmp, dst):  # dst is the new output, tmp holds the old one
        remove(tmp)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if os.path.lexists(old):
        remove(old)
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    remove(old)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTDIR, errno.EISDIR):
        return False  # no support here, or a file and a folder (the fallback handles both)
    raise OSError(err, os.strerror(err), str(b))
