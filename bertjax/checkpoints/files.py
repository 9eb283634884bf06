"""Durable file writes shared by every command that must never leave a half-written file.

`atomic_write` writes to a temporary sibling named `.tmp-<tag>-<name>`, fsyncs it, renames it over
the target and fsyncs the folder, so that after a crash (even `kill -9` or a power cut) the target
holds either its old content or the whole new one. `is_leftover` recognises the temporary files an
interrupted write left behind, so that a resumed run can delete them. `make_public` gives a folder
built privately (`tempfile.mkdtemp` makes it 0700) the mode any other tool would give it.

`out_lock` keeps two runs off one output folder: an OS-level lock (`fcntl.flock`) on a file
`.lock-<tag>` in it, which holds the pid and host of the run. The kernel drops the lock when the
process dies, however it dies (even `kill -9`), so a lock is never stale: a lock file left behind by
a killed run is just taken over by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket


def temp_name(path: str, tag: str) -> str:
    """The temporary sibling of `path` that `atomic_write` writes first."""
    return os.path.join(os.path.dirname(path), f".tmp-{tag}-{os.path.basename(path)}")


def is_leftover(name: str, tag: str | None = None) -> bool:
    """Whether a file name is a temporary file of an interrupted write (of `tag`, or of any tag)."""
    return name.startswith(f".tmp-{tag}-" if tag else ".tmp-")


def atomic_write(path: str, data: bytes, tag: str = "bertjax") -> None:
    """Writes `data` to `path` durably and atomically (temporary file, fsync, rename, fsync folder).

    Args:
      path: the target file; its folder must exist.
      data: the whole new content.
      tag: names the temporary file (one tag per concurrent writer keeps writers apart).

    Raises:
      FileNotFoundError: the folder of `path` does not exist (saying so, before anything is written).
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    tmp = temp_name(path, tag)  # left behind by a crash; the next run removes it (is_leftover)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def make_public(folder: str) -> None:
    """Gives a folder made by `tempfile.mkdtemp` (0700) the mode `os.makedirs` would have given it:
    0777 less the umask (0755 under the usual 022), before it is renamed into place."""
    os.chmod(folder, 0o777 & ~umask())


class FolderInUseError(OSError):
    """Another process holds the lock of an output folder."""


def is_lock(name: str) -> bool:
    """Whether a file name is the lock file of `out_lock`."""
    return name.startswith(".lock-")


def _holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return text or "a process that has not written its pid yet"


def _acquire(path: str, folder: str, what: str) -> int:
    """A descriptor of `path` holding its exclusive flock (the file still at `path`)."""
    while True:
        os.makedirs(folder, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the folder, created by a run ending now, was just removed
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by another bertjax {what} run ({holder}); "
                                   f"wait for it to end, or choose another --out") from None
        try:  # the previous holder may have removed the file between our open and our flock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def out_lock(folder: str, tag: str, what: str):
    """Holds the lock `.lock-<tag>` of `folder` (created if needed) for the `with` block.

    Args:
      folder: the output folder.
      tag: names the lock (one per process of a multi-process run, e.g. "extract-p0").
      what: the command, for the message ("extract", "finetune").

    A folder created here and left empty (a run refused before writing anything) is removed.

    Raises:
      FolderInUseError (an OSError) naming the process that holds the lock.
    """
    created = not os.path.isdir(folder)
    path = os.path.join(folder, f".lock-{tag}")
    fd = _acquire(path, folder, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still holding the lock: nobody else can hold this file now
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty
