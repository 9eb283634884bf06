"""Durable file writes shared by every command that must never leave a half-written file.

`atomic_write` writes to a temporary sibling named `.tmp-<tag>-<name>`, fsyncs it, renames it over
the target and fsyncs the folder, so that after a crash (even `kill -9` or a power cut) the target
holds either its old content or the whole new one. `is_leftover` recognises the temporary files an
interrupted write left behind, so that a resumed run can delete them. `make_public` gives a folder
built privately (`tempfile.mkdtemp` makes it 0700) the mode any other tool would give it.
"""

from __future__ import annotations

import os


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
    """
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
