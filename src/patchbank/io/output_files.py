"""Writing outputs without losing anything: checks before the work, exclusive creation, locks.

* :func:`check_output_file` / :func:`check_output_folder`: called BEFORE a fit or a prediction
  starts.  The target must not be of the wrong kind (a folder where a file is wanted, a file
  where a folder is wanted); missing folders on the way are allowed (the commands create them),
  but the nearest existing ancestor must be a folder (not a file) that this process may write
  to, and its file system must have ``need_bytes`` free (:func:`check_free_space`; at least
  :data:`MIN_FREE_BYTES`).  Each problem is a one-line :class:`PatchbankError` naming the path.
* :func:`file_lock`: an exclusive ``fcntl.flock`` on a lock file (``<model>.lock`` beside a
  model, see :func:`lock_path_for`) or on a folder itself; a second process waits up to
  ``timeout`` seconds (default :func:`lock_timeout`: :data:`LOCK_TIMEOUT_S`, or the environment
  variable ``PATCHBANK_LOCK_TIMEOUT``), then fails with a message naming the lock.  Lock files
  are left in place (removing them would let two processes lock two different files).
* :func:`reserve_file`: create an output file exclusively (``O_EXCL``) at the start of a run,
  as an empty placeholder; :func:`commit_file` later writes the real content to a temporary
  file in the same folder and renames it over the placeholder only if the placeholder is still
  the one this run created; :func:`release_file` removes an unused placeholder.  A placeholder
  can hold a lock for the run's lifetime (``hold_lock=True``); an empty placeholder whose lock
  nobody holds was left by a run that died and is taken over.

* :func:`check_path_given`: an empty path (``""``, usually an unset shell variable) is refused;
  ``Path("")`` is the current folder, so it would read or write there.
* :func:`check_not_inputs`: no output file of a run may be one of the files the run reads (the
  same real path, links and relative paths resolved): writing it would destroy that input.
  Every command calls it before any work, also with ``--overwrite``.

* :func:`check_utf8_name`: a name that an output file will hold (CSV, JSON, Markdown are UTF-8),
  or a path a library opens only by a UTF-8 name (safetensors), must be valid UTF-8; a file or
  folder name holding other bytes is refused before the work, its bytes shown.

POSIX only (``fcntl``), like the rest of the command line's file handling.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from patchbank.errors import PatchbankError

MIN_FREE_BYTES = 16 * 2**20
"""Free space every output check requires at least (16 MiB), on top of the expected size."""

LOCK_TIMEOUT_S = 1800.0
"""How long a writer waits for another one's lock by default (30 minutes: one ``fit --add``)."""

_POLL_S = 0.2


def format_size(n: float) -> str:
    """``16777216`` -> ``16.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


# ------------------------------------------------------------------------------------------------
# checks before the work
# ------------------------------------------------------------------------------------------------

def check_utf8_name(name: str | os.PathLike, what: str, why: str) -> None:
    """Raise a one-line :class:`PatchbankError` unless ``name`` (a path or a name read from the
    file system, which Python holds with surrogate escapes for bytes that are not UTF-8) is valid
    UTF-8.  ``what`` names it ("image file name", "category name"), ``why`` says what needs
    UTF-8 ("the prediction files name it in UTF-8")."""
    try:
        os.fspath(name).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise PatchbankError(f"{what} is not valid UTF-8: {shown} ({why}); rename it") from None


def check_path_given(path: str | os.PathLike, what: str) -> None:
    """Raise a one-line :class:`PatchbankError` when ``path`` is empty: ``Path("")`` means the
    current folder, so an empty argument would read (or write) there.  ``what`` names it
    ("an input path", "'-o' / '--output'")."""
    if not os.fspath(path):
        raise PatchbankError(f'{what} is empty (""): give a file or folder name (an empty argument '
                             f'is usually an unset shell variable)')


def check_not_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """Raise a one-line :class:`PatchbankError` naming both paths when one of ``outputs`` is one
    of ``inputs``: the same real path (``os.path.realpath``: links, ``..`` and relative paths
    resolved), so writing the output would replace, and destroy, a file the run reads.  Called
    before any work, whatever ``--overwrite`` says."""
    real: dict[str, str | os.PathLike] = {}
    for p in inputs:
        real.setdefault(os.path.realpath(p), p)
    for out in outputs:
        hit = real.get(os.path.realpath(out))
        if hit is not None:
            raise PatchbankError(f"the output {out} is the input {hit} (the same file): writing it "
                                 f"would destroy that input; choose another output path")


def remove_previous(paths: Iterable[Path]) -> None:
    """Remove a previous run's result files (those that exist) before a run that replaces them
    (``--overwrite``) writes anything else, so that a run stopped part-way leaves no old table
    beside new heatmaps to be read as one run; a file that cannot be removed is a one-line error."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise PatchbankError(f"cannot replace {path}: {exc.strerror or exc}") from None


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: the folders
    ``mkdir -p folder`` would create."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; a folder holding anything, or
    that cannot be removed, stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def is_writable_folder(folder: Path) -> bool:
    """True when this process may create files in ``folder`` (``os.access`` W_OK and X_OK; it
    also answers False on a read-only file system)."""
    return os.access(folder, os.W_OK | os.X_OK)


def _nearest_existing(path: Path, target: Path) -> Path:
    """The nearest existing ancestor of ``path`` (``path`` itself included); a file on the way
    is an error naming ``target``."""
    current = path
    while not current.exists():
        if current.is_symlink():
            raise PatchbankError(f"cannot write {target}: {current} is a broken link")
        parent = current.parent
        if parent == current:
            break
        current = parent
    if not current.is_dir():
        raise PatchbankError(f"cannot write {target}: {current} is a file, not a folder")
    return current


def check_free_space(folder: Path, need_bytes: int, target: Path) -> None:
    """Raise when the file system of the existing ``folder`` has fewer than
    ``max(need_bytes, MIN_FREE_BYTES)`` bytes free (the message names ``target``)."""
    need = max(int(need_bytes), MIN_FREE_BYTES)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell (unusual file system): the write itself will say
    if free < need:
        raise PatchbankError(f"not enough free space for {target}: {format_size(free)} free in "
                             f"{folder}, need at least {format_size(need)}")


def _check_folder_chain(folder: Path, target: Path, need_bytes: int) -> None:
    base = _nearest_existing(folder, target)
    if not is_writable_folder(base):
        raise PatchbankError(f"cannot write {target}: folder {base} is not writable")
    check_free_space(base, need_bytes, target)


def check_output_file(path: str | os.PathLike, *, need_bytes: int = 0) -> Path:
    """Check that the file ``path`` can be written (see the module docstring); returns it.

    Raises:
        PatchbankError: ``path`` is a folder, a file stands where a folder is needed, the folder
            is not writable, or too little space is free.
    """
    path = Path(path)
    if path.is_dir():
        raise PatchbankError(f"{path} is a folder; give a file name")
    _check_folder_chain(path.parent, path, need_bytes)
    return path


def check_output_folder(path: str | os.PathLike, *, need_bytes: int = 0) -> Path:
    """Check that files can be written inside the folder ``path`` (it may not exist yet); returns it.

    Raises:
        PatchbankError: ``path`` (or a folder on the way) is a file, the folder is not
            writable, or too little space is free.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PatchbankError(f"output path is not a folder: {path}")
    _check_folder_chain(path, path, need_bytes)
    return path


def make_folder(path: Path) -> Path:
    """``mkdir -p path``, an OSError reported as one line naming ``path``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PatchbankError(f"cannot create folder {path}: {exc.strerror or exc}") from None
    return path


# ------------------------------------------------------------------------------------------------
# locks
# ------------------------------------------------------------------------------------------------

def lock_timeout() -> float:
    """The lock wait in seconds: ``PATCHBANK_LOCK_TIMEOUT`` if set (a number >= 0), else
    :data:`LOCK_TIMEOUT_S`."""
    raw = os.environ.get("PATCHBANK_LOCK_TIMEOUT")
    if raw is None or not raw.strip():
        return LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise PatchbankError(f"PATCHBANK_LOCK_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise PatchbankError(f"PATCHBANK_LOCK_TIMEOUT must be >= 0, got {raw!r}")
    return value


def lock_path_for(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``<path>.lock`` beside the file itself (links resolved, so a
    writer given a link and one given its target hold the same lock)."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + ".lock")


def _open_for_lock(lock: Path) -> int:
    try:
        if lock.is_dir():
            return os.open(lock, os.O_RDONLY)
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise PatchbankError(f"cannot open lock {lock}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def file_lock(lock: str | os.PathLike, *, timeout: float | None = None, what: str = "",
              quiet: bool = False) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``lock`` (a lock file, created if missing, or a folder).

    Waits up to ``timeout`` seconds (None: :func:`lock_timeout`), saying once on stderr that it
    waits unless ``quiet``.  ``what`` names the thing protected in messages (default the lock).

    Raises:
        PatchbankError: the lock was not free within ``timeout``.
    """
    lock = Path(lock)
    timeout = lock_timeout() if timeout is None else float(timeout)
    what = what or str(lock)
    fd = _open_for_lock(lock)
    try:
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PatchbankError(
                        f"{what} is locked by another patchbank process (lock {lock}); gave up "
                        f"after {timeout:g} s (set PATCHBANK_LOCK_TIMEOUT to wait longer)") from None
                if not told and not quiet:
                    print(f"waiting for another patchbank process to finish writing {what} "
                          f"(lock {lock}, up to {timeout:g} s)", file=sys.stderr, flush=True)
                    told = True
                time.sleep(_POLL_S)
        yield lock
    finally:
        os.close(fd)   # closing the descriptor releases the lock


# ------------------------------------------------------------------------------------------------
# exclusive creation
# ------------------------------------------------------------------------------------------------

@dataclass
class Reservation:
    """An output file this run created exclusively (an empty placeholder until committed)."""

    path: Path
    dev: int
    ino: int
    fd: int | None = None      # open (and flock-ed) while the run holds the placeholder's lock
    committed: bool = False

    def is_current(self) -> bool:
        """True while ``path`` is still this run's placeholder (same device and inode)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def close(self) -> None:
        """Close the placeholder's descriptor (releasing its lock)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _take_over_stale(path: Path, hold_lock: bool) -> Reservation | None:
    """An existing EMPTY file whose lock nobody holds (left by a run that died) as this run's
    reservation; None when it has content; an error when another run holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size != 0 or not path.is_file():
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PatchbankError(f"{path} is being written by another patchbank run; wait for it "
                             f"or choose another output folder") from None
    if not hold_lock:
        os.close(fd)
        fd = None
    return Reservation(path, st.st_dev, st.st_ino, fd)


def reserve_file(path: str | os.PathLike, *, hold_lock: bool = False,
                 take_over_empty: bool = True) -> Reservation:
    """Create ``path`` exclusively (``O_EXCL``) as an empty placeholder; returns the reservation.

    With ``hold_lock`` the placeholder stays open with an exclusive ``flock`` until
    :func:`commit_file` or :func:`release_file`, which tells other runs it is in use.  An
    existing empty file whose lock is free is taken over when ``take_over_empty``.

    Raises:
        PatchbankError: the file exists (``... already exists; pass --overwrite to replace it``),
            another run holds it, or it cannot be created.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        stale = _take_over_stale(path, hold_lock) if take_over_empty else None
        if stale is None:
            raise PatchbankError(f"{path} already exists; pass --overwrite to replace it") from None
        return stale
    except OSError as exc:
        raise PatchbankError(f"cannot create {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if hold_lock:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # another run took it over between our create and lock
            os.close(fd)
            raise PatchbankError(f"{path} is being written by another patchbank run") from None
    else:
        os.close(fd)
        fd = None
    return Reservation(path, st.st_dev, st.st_ino, fd)


def release_file(res: Reservation) -> None:
    """Remove an uncommitted placeholder (only if it is still this run's and still empty)."""
    try:
        if not res.committed and res.is_current() and os.stat(res.path).st_size == 0:
            os.unlink(res.path)
    except OSError:
        pass
    finally:
        res.close()


def commit_file(path: str | os.PathLike, write: Callable[[Path], None],
                reservation: Reservation | None = None) -> Path:
    """Write ``path`` through a temporary file in its folder (``write(tmp_path)`` fills it;
    the temporary name keeps ``path``'s suffix), then rename it over ``path``.

    With a ``reservation`` the rename happens only while ``path`` is still that placeholder;
    otherwise the content is kept beside it as ``<name>.<pid>`` and an error names both.
    Without one, ``path`` is replaced whatever is there (``--overwrite``).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        if reservation is not None and not reservation.is_current():
            kept = path.with_name(f"{path.name}.{os.getpid()}")
            os.replace(tmp, kept)
            raise PatchbankError(f"{path} was replaced by another process while this run was "
                                 f"writing; this run's result is in {kept}")
        os.replace(tmp, path)
    except OSError as exc:
        raise PatchbankError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    if reservation is not None:
        reservation.committed = True
        reservation.close()
    return path


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it back is not
    thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
