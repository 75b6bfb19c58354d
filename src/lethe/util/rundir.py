"""Run directories: output paths checked before any work, one run per directory (a lock), no stale state.

``claim(directory)`` is what every command that writes a run does before loading a model: it checks
that the directory can be written, takes ``.lethe.lock`` (pid, host, start time; a lock left by a dead
process on this host is taken over, with a message), removes the temporary files and directories of
an interrupted run, and refuses to start over a finished run unless asked to resume or overwrite it.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterable, Iterator

from .errors import LetheError
from .io import TEMP_PREFIX

LOCK_NAME = ".lethe.lock"
_HELD: set[Path] = set()  # directories this process holds the lock of
# temporary names written by Lethe 0.1-0.2, before they carried TEMP_PREFIX
_LEGACY_TEMP = (".ckpt.", ".model.")


def check_output(path, *, option: str = "--out", kind: str = "dir") -> Path:
    """``path`` can be created (or used) as a directory (``kind="dir"``) or a file; else a one-line error."""
    path = Path(path)
    for part in (path, *path.parents):  # exists() says False for a link loop, and mkdir would then fail
        if part.is_symlink() and not part.exists():
            raise LetheError(f"{option} {path}: {part} is a symbolic link that leads nowhere (a loop or a missing "
                             "target)")
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise LetheError(f"{option} {path}: exists and is a file; expected a directory")
        if kind == "file" and path.is_dir():
            raise LetheError(f"{option} {path}: is a directory; expected a file name")
    ancestor = path if path.exists() and kind == "dir" else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LetheError(f"{option} {path}: cannot be created under {ancestor}, which is a file")
    if not _writable(ancestor):
        raise LetheError(f"{option} {path}: {ancestor} is not writable")
    return path


def _writable(directory: Path) -> bool:
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return False
    except (AttributeError, OSError):
        pass
    return os.access(directory, os.W_OK | os.X_OK)


def _rank() -> int:
    """This process's rank under a launcher (torchrun/accelerate set RANK); 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(directory, *, command: str = "lethe") -> Iterator[Path]:
    """Hold ``directory/.lethe.lock`` for the duration; refuse if another live run holds it.

    Under a launcher only rank 0 takes the lock (the other ranks are the same run). A directory
    created only to hold the lock is removed again when the run fails before writing anything.
    """
    directory = Path(directory)
    key = directory.resolve()
    if _rank() != 0 or key in _HELD:  # other ranks, or a nested claim by this same run
        yield directory
        return
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": command}
    _acquire(lock, mine)
    _HELD.add(key)
    try:
        yield directory
    finally:
        _HELD.discard(key)
        held = _read_lock(lock)
        if held.get("pid") == mine["pid"] and held.get("host") == mine["host"]:
            with suppress(OSError):  # a lock that cannot be removed is stale once this process ends
                lock.unlink()
        if created:
            try:
                directory.rmdir()  # only if the run left nothing behind
            except OSError:
                pass


def _acquire(lock: Path, mine: dict) -> None:
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder and _stale(holder):
                print(f"lethe: taking over {lock}: the run that held it (pid {holder['pid']}, started "
                      f"{holder.get('started', '?')}) is gone", file=sys.stderr)
                lock.unlink(missing_ok=True)
                continue
            if not holder:  # unreadable: a lock being written this instant, or a torn one
                time.sleep(0.2)
                if not _read_lock(lock):
                    lock.unlink(missing_ok=True)
                continue
            raise _in_use(lock, holder) from None
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        return
    raise LetheError(f"could not take the lock {lock}: another run keeps taking it")


def _stale(holder: dict) -> bool:
    """A lock left by a process of this host (not this one) that no longer exists."""
    pid = holder.get("pid")
    return (holder.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid()
            and not _alive(pid))


def _in_use(lock: Path, holder: dict) -> LetheError:
    remote = holder.get("host") != socket.gethostname()
    where = f"pid {holder.get('pid')}" + (f" on host {holder.get('host')}" if remote else "")
    return LetheError(f"{lock.parent} is in use by another Lethe run ({where}, {holder.get('command', '?')}, "
                      f"started {holder.get('started', '?')}); wait for it, use another --out, or delete "
                      f"{lock} if that run is gone")


def _read_lock(lock: Path) -> dict:
    try:
        data = json.loads(lock.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remove_temporaries(directory, names: Iterable[str] | None = None) -> list[Path]:
    """Delete temporaries an interrupted run left in ``directory`` (all of them, or those of ``names``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        n = entry.name
        ours = n.startswith(TEMP_PREFIX) or n.startswith(_LEGACY_TEMP)
        if ours and names is not None:
            ours = any(n.startswith(f"{TEMP_PREFIX}{x}.") for x in names)
        if ours:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# Where --overwrite moves an earlier run's outputs until the new run has finished (then they are deleted).
REPLACED = ".lethe-replaced"


def start_fresh(directory, outputs: Iterable[str], *, resume: bool, overwrite: bool, option: str = "--out",
                dry_run: bool = False, keep_aside: bool | str = False) -> Path | None:
    """A run directory that already holds ``outputs`` of an earlier run: continue (resume), replace
    (overwrite: they leave their places now, so a killed rerun cannot leave the old result looking current),
    or refuse. ``dry_run`` only refuses. With ``keep_aside`` the old outputs are moved into ``REPLACED`` (returned)
    instead of deleted, for :func:`claim` to delete once the new run succeeds or put back if it fails."""
    directory = Path(directory)
    present = [n for n in outputs if (directory / n).exists() or (directory / n).is_symlink()]
    if not present or resume:
        return None
    if not overwrite:
        raise LetheError(f"{option} {directory} already holds a run ({', '.join(present)}): pass --resume to "
                         "continue it, --overwrite to replace it, or choose another --out")
    if dry_run:
        return None
    if keep_aside:
        aside = directory / (keep_aside if isinstance(keep_aside, str) else REPLACED)
        if aside.exists():  # an older replaced run whose replacement was interrupted: the newer one wins
            shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir()
        for n in present:
            os.replace(directory / n, aside / n)
        return aside
    for n in present:
        p = directory / n
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return None


def _put_back(directory: Path, aside: Path) -> None:
    """A replacing run failed: its partial outputs go, the earlier run's return to their places."""
    for entry in aside.iterdir():
        target = directory / entry.name
        if target.exists() or target.is_symlink():
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        os.replace(entry, target)
    aside.rmdir()


def preflight(directory, outputs: Iterable[str] = (), *, resume: bool = False, overwrite: bool = False,
              option: str = "--out") -> Path:
    """The refusals :func:`claim` would make, checked without writing anything (for callers with slow work
    to do before they claim the directory, such as scoring a retain model)."""
    directory = check_output(directory, option=option)
    holder = _read_lock(directory / LOCK_NAME)
    if holder and _rank() == 0 and directory.resolve() not in _HELD and not _stale(holder):
        raise _in_use(directory / LOCK_NAME, holder)
    start_fresh(directory, outputs, resume=resume, overwrite=overwrite, option=option, dry_run=True)
    return directory


@contextmanager
def claim(directory, outputs: Iterable[str] = (), *, resume: bool = False, overwrite: bool = False,
          command: str = "lethe", option: str = "--out") -> Iterator[Path]:
    """Check, lock and tidy ``directory`` for a run (see the module docstring).

    With ``overwrite`` the earlier run is moved aside, not deleted, until the new run ends: an error before
    it finishes (a model that does not load, an option refused once the model is known) puts the earlier run
    back untouched; success deletes it. An interrupted replacement (Ctrl-C, a kill) keeps its own partial
    state for ``--resume``, and the earlier run waits in ``.lethe-replaced`` until a replacement finishes."""
    directory = check_output(directory, option=option)
    with run_lock(directory, command=command):
        aside = None
        if _rank() == 0:
            remove_temporaries(directory)
            aside = start_fresh(directory, outputs, resume=resume, overwrite=overwrite, option=option,
                                keep_aside=True)
        with _replacing(directory, aside):
            yield directory


@contextmanager
def _replacing(directory: Path, aside: Path | None) -> Iterator[None]:
    try:
        yield
    except Exception:
        if aside is not None:
            _put_back(directory, aside)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def replacing(directory, outputs: Iterable[str], *, resume: bool, overwrite: bool, aside: str = REPLACED,
              option: str = "--out") -> Iterator[None]:
    """:func:`start_fresh` for outputs in ``directory``, the earlier ones kept in ``aside`` until the body
    succeeds (then deleted) or fails with an error (then put back)."""
    directory = Path(directory)
    kept = start_fresh(directory, outputs, resume=resume, overwrite=overwrite, option=option, keep_aside=aside)
    with _replacing(directory, kept):
        yield


def describe_os_error(e: OSError) -> str:
    """One line for a failed write or read: what, where, why."""
    where = f" {e.filename}" if e.filename else ""
    reason = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}.get(e.errno, e.strerror or str(e))
    return f"cannot access{where}: {reason}"
