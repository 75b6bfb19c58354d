"""Atomic file writes (a file is either complete or absent, never half-written), storage errors as
``OSError`` naming the file, and defensive reads of user text files."""
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


def read_user_text(path: str | os.PathLike) -> str:
    """A user's text file (data, config, template) as a string: UTF-8 (a byte-order mark allowed) with no NUL
    characters. A wrong encoding or a binary file is a one-line :class:`DataError` naming the line."""
    from .errors import DataError

    path = Path(path)
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(path, "is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(path, f"line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                              "save the file as UTF-8") from None
    nul = text.find("\0")
    if nul >= 0:
        raise DataError(path, f"line {text.count(chr(10), 0, nul) + 1}: NUL character (a binary file?); "
                              "expected UTF-8 text")
    return text


def _storage_errno(message: str) -> int | None:
    import re

    found = re.search(r"os error (\d+)|code: (\d+)", message)  # the Rust io::Error that safetensors wraps
    return int(found.group(1) or found.group(2)) if found else None


@contextmanager
def storage_errors(path: str | os.PathLike) -> Iterator[None]:
    """Writes inside this block that fail in a library with its own error type (safetensors' SafetensorError on
    a full disk) raise ``OSError`` naming ``path``, which the CLI reports in one line."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        code = _storage_errno(str(e))
        raise OSError(code, os.strerror(code) if code else str(e).splitlines()[0], str(path)) from e


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
