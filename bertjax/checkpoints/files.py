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

Guards for untrusted paths and files: `check_out` refuses an OUT that `--force` must not replace (the
current folder or a parent of it, a folder bertjax did not write), `open_regular` opens only a
regular file (a FIFO would block the reader forever, a device never end), and `bounded_lines`
reads a file line by line without ever holding more than `limit` bytes of one line, and
`lone_surrogate` finds what JSON can hold but no text is (a lone surrogate, which tokenizers refuse).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import socket
import stat

# The files that make a folder a bertjax checkpoint (= checkpoint.CONFIG_FILE, PARAMS_FILE; that
# module imports JAX), and the tokenizer files it may hold beside them (sources.TOKENIZER_FILES):
# `--force` replaces only a folder holding both of the first, or nothing but these names.
CHECKPOINT_FILES = ("config.json", "flax_model.msgpack")
# (WordPiece's vocab.txt, byte-level BPE's vocab.json and merges.txt, SentencePiece's models
# (DeBERTa-v2/v3's spm.model), the fast tokenizer's tokenizer.json)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                   "added_tokens.json", "spm.model")


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


def check_out(out, force: bool, what: str = "bertjax checkpoint",
              marks: tuple[str, ...] = CHECKPOINT_FILES, flag: str = "force=True",
              ours: bool = True, names: tuple[str, ...] = CHECKPOINT_FILES + TOKENIZER_FILES) -> str:
    """The absolute path of OUT, a folder about to be written (replaced with `force`).

    Refused: an empty OUT (an unset variable, which would mean the current folder: ValueError);
    the current folder or one of its parents; an existing OUT without `force`, or that is not a
    folder; with `force` (and `ours`), a folder bertjax did not write: one lacking any of `marks`
    and holding anything but `names` (FileExistsError, nothing touched).
    """
    out = os.fspath(out)
    if not out.strip():
        raise ValueError("OUT is empty (an unset variable?); name the folder to write")
    out = os.path.abspath(out)
    real, cwd = os.path.realpath(out), os.path.realpath(os.getcwd())
    if os.path.commonpath([real, cwd]) == real:
        raise FileExistsError(f"{out} is the current folder or one of its parents; choose a new "
                              f"folder for OUT")
    if not os.path.lexists(out):
        return out
    if not force:
        raise FileExistsError(f"{out} already exists; pass {flag} to replace it")
    if not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a folder; not replacing it")
    other = sorted(set(os.listdir(out)) - set(names))
    if ours and other and not all(os.path.isfile(os.path.join(out, m)) for m in marks):
        raise FileExistsError(f"{out} is not a {what} folder (no {' and '.join(marks)}; it holds "
                              f"{', '.join(other[:3])}{' ...' if len(other) > 3 else ''}), and only "
                              f"such a folder is replaced; choose another OUT, or remove it "
                              f"yourself")
    return out


_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a fifo", stat.S_ISSOCK: "a socket",
          stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}


def file_kind(mode: int) -> str:
    """What a stat mode is, for messages: "a fifo", "a folder", ..."""
    return next((kind for test, kind in _KINDS.items() if test(mode)), "not a plain file")


def open_regular(path: str, error=ValueError, what: str = "file"):
    """`path` opened for binary reading, refused (`error`, one line) unless it is a regular file.

    The file is opened non-blocking and checked on the open descriptor: a FIFO's open or read would
    block forever, a device's never end, and a path swapped after a check would escape it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{what} {path} is not a regular file ({file_kind(mode)})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_regular(path: str, error=ValueError, what: str = "file") -> None:
    """Refuses (`error`) a path that exists and is not a regular file, without opening it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file ({file_kind(mode)})")


@dataclasses.dataclass(frozen=True)
class LongLine:
    """A line longer than `bounded_lines`' limit, read but not kept: its size and sha256."""

    size: int
    sha256: bytes


def bounded_lines(f, limit: int):
    """(1-based number, line) for each line of the binary file `f`, the line as bytes (with its
    newline), or a `LongLine` for one longer than `limit` bytes: such a line is read in blocks of
    `limit` bytes and dropped, so that memory never holds more than `limit` bytes of one line."""
    number = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        number += 1
        if len(raw) <= limit:  # the whole line, its newline included
            yield number, raw
            continue
        digest, size = hashlib.sha256(raw), len(raw)
        while not raw.endswith(b"\n"):
            raw = f.readline(limit + 1)
            if not raw:
                break
            digest.update(raw)
            size += len(raw)
        yield number, LongLine(size, digest.digest())


def lone_surrogate(text: str, field: str) -> str | None:
    """Why `text` is not text, when it holds a lone surrogate (JSON's "\\ud800", which no UTF-8
    and no tokenizer can take), naming the field and the character; None when it is fine."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"field {field!r} holds a lone surrogate ({text[e.start]!r}) at character "
                f"{e.start}, which is not text")
    return None
