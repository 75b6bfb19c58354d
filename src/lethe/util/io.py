"""Atomic file writes: a file is either complete or absent, never half-written."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# Every temporary file or directory Lethe writes starts with this, so an interrupted run's leftovers
# can be recognised and removed (lethe.util.rundir.remove_temporaries).
TEMP_PREFIX = ".lethe-tmp."


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextmanager
def atomic_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``directory``, on failure it is removed."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{directory.name}.", dir=directory.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 directories; outputs are ordinary ones
        yield tmp
        apply_umask(tmp)
        crash_point("save")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def apply_umask(directory: str | os.PathLike) -> None:
    """Give every file and directory under ``directory`` the modes the user's umask asks for (some
    writers create 0600 files; results and models are ordinary files)."""
    umask = current_umask()
    for root, dirs, files in os.walk(directory):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


def write_text(path, text: str) -> Path:
    def _w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _w)


def write_json(path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def append_jsonl(path, obj: Any) -> None:
    """Append one line; a crash mid-run leaves earlier lines intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=_jsonable) + "\n")


def read_jsonl(path) -> list[dict]:
    """The complete lines of a JSON-lines log; a torn last line (a run killed mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn by a kill: the line was never finished
            raise
    return out


_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process here when ``LETHE_CRASH_AT`` is ``name`` or ``name:K`` (the K-th time it is reached).

    For the crash-safety tests: SIGKILL at a named point (mid-epoch, between checkpoint renames, during a
    save) is how a power cut or an OOM killer ends a run, and ``--resume`` must recover from each.
    """
    want = os.environ.get("LETHE_CRASH_AT")
    if not want:
        return
    target, _, count = want.partition(":")
    if target != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] >= int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _jsonable(x: Any):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
