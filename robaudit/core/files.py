"""Files in and out: atomic writes, UTF-8 reads, and pydantic validation that fails as one-line BadInput.

Every module that writes a result, a card or a report goes through :func:`atomic_write_text` so a
crash never leaves half a file; every module that validates user input with pydantic goes through
:func:`validate` / :func:`first_error` so the user reads one line, never a ValidationError. Output
folders are checked (:func:`preflight_dir`) and locked (:class:`OutputLock`) before any compute, so a
run never computes for an hour and then finds it cannot write, or overwrites a concurrent run.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from robaudit.core.errors import BadInput, RobauditError, RuntimeFailure

M = TypeVar("M", bound=BaseModel)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically (NumPy scalars and paths become plain JSON)."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=json_default))
    return Path(path)


def json_default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # NumPy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def first_error(exc: ValidationError, *, flag: bool = False) -> str:
    """The first pydantic error as ``loc: message``; ``flag`` spells the location as a CLI option (--step-size)."""
    e = exc.errors()[0]
    where = ".".join(str(x) for x in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if not where:
        return msg
    return f"--{where.replace('_', '-')}: {msg}" if flag else f"{where}: {msg}"


def validate(model: type[M], data: Any, *, where: str = "", flag: bool = False, hint: str | None = None) -> M:
    """``model.model_validate(data)``, or a one-line BadInput naming ``where`` (a file, a recipe) first."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msg = first_error(exc, flag=flag)
        raise BadInput(f"{where}: {msg}" if where else msg, hint) from None


#: the largest structured document robaudit reads (an audit.json of thousands of cells stays far below)
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
#: the deepest nesting of arrays/tables/dotted keys any robaudit document has (results reach about 8);
#: checked on the text, before a parser recurses into it
MAX_DOCUMENT_DEPTH = 64


def read_text(path: Path, what: str = "file", hint: str | None = None, *, max_bytes: int | None = None) -> str:
    """A UTF-8 text file, or a one-line BadInput (missing, a folder, unreadable, not UTF-8, over ``max_bytes``)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}", hint) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise BadInput(f"{what} {str(p)!r} is larger than {max_bytes // (1024 * 1024) or max_bytes} "
                       f"{'MiB' if max_bytes >= 1024 * 1024 else 'bytes'}, too large to be a robaudit document",
                       hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what} {str(p)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                       f"{exc.start})", hint or "save it as UTF-8") from None


def _skip_string(text: str, i: int, toml: bool) -> int:
    """The index after the string literal that starts at ``text[i]`` (a quote); len(text) if unterminated."""
    q = text[i]
    if toml and text.startswith(q * 3, i):  # multi-line string: ends at the first triple quote (+ up to 2 quotes)
        end = text.find(q * 3, i + 3)
        if end < 0:
            return len(text)
        while q == '"' and text[end - 1] == "\\" and (end - i - 3) > 0:  # an escaped quote: look further
            nxt = text.find(q * 3, end + 1)
            if nxt < 0:
                return len(text)
            end = nxt
        end += 3
        while end < len(text) and text[end] == q and end - i < len(text):
            end += 1
        return end
    j = i + 1
    escapes = q == '"'  # TOML literal strings ('...') have no escapes; JSON has only "..."
    while j < len(text):
        c = text[j]
        if escapes and c == "\\":
            j += 2
            continue
        if c == q:
            return j + 1
        if toml and c == "\n":
            return j
        j += 1
    return len(text)


def nesting_depth(text: str, toml: bool = False, limit: int | None = None) -> int:
    """How deeply ``text`` (JSON, or TOML with ``toml``) nests, read off the text without parsing it.

    Arrays and objects/inline tables count a level each; in TOML so does each dot of a dotted key or a
    ``[table.header]`` (``a.b.c = 1`` is three levels). Strings and comments are skipped. With ``limit``,
    the scan stops as soon as the depth passes it. Linear time, no recursion: this is what keeps a
    hostile file from ever reaching a recursive parser."""
    depth = deepest = 0
    stack: list[str] = []
    key = toml  # TOML: reading a key (dots nest) rather than a value (dots are decimals)
    base = 0  # TOML: the levels of the current [table] header
    dots = 0
    header = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or (toml and c == "'"):
            i = _skip_string(text, i, toml)
            continue
        if toml and c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in "[{":
            if toml and c == "[" and not stack and key and not header:
                header, dots, base = True, 0, 0
                if text.startswith("[[", i):
                    i += 1
            else:
                stack.append(c)
                key = toml and c == "{"
                dots = 0
        elif c in "]}":
            if header and not stack:
                base, header, key = dots + 1, False, False
                if text.startswith("]]", i):
                    i += 1
            elif stack:
                stack.pop()
                key = False
        elif toml:
            if c == "." and key:
                dots += 1
            elif c == "=":
                key = False
            elif c == "," and stack and stack[-1] == "{":
                key, dots = True, 0
            elif c == "\n" and not stack:
                key, dots, header = True, 0, False
        depth = len(stack) + (base + dots + (1 if key and toml else 0) if toml else 0)
        if depth > deepest:
            deepest = depth
            if limit is not None and deepest > limit:
                return deepest
        i += 1
    return deepest


def _check_depth(text: str, where: str, hint: str | None, toml: bool) -> None:
    if nesting_depth(text, toml=toml, limit=MAX_DOCUMENT_DEPTH) > MAX_DOCUMENT_DEPTH:
        raise BadInput(f"{where} is nested too deeply to be a robaudit document (more than {MAX_DOCUMENT_DEPTH} "
                       "levels)", hint)


def parse_json(text: str, where: str = "file", hint: str | None = None) -> Any:
    """``text`` as JSON after the size and nesting checks, or a one-line BadInput naming ``where``."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise BadInput(f"{where} is too large to be a robaudit document", hint)
    _check_depth(text, where, hint, toml=False)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{where} is not valid JSON: {exc}", hint) from None
    except RecursionError:  # unreachable after the depth check; kept as the last line of defence
        raise BadInput(f"{where} is nested too deeply to be a robaudit document", hint) from None


def parse_toml(text: str, where: str = "file", hint: str | None = None) -> dict[str, Any]:
    """``text`` as TOML after the size and nesting checks, or a one-line BadInput naming ``where``."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    if len(text) > MAX_DOCUMENT_BYTES:
        raise BadInput(f"{where} is too large to be a robaudit document", hint)
    _check_depth(text, where, hint, toml=True)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{where} is not valid TOML: {exc}", hint) from None
    except RecursionError:
        raise BadInput(f"{where} is nested too deeply to be a robaudit document", hint) from None


def read_json(path: Path, what: str = "file", hint: str | None = None) -> Any:
    """A UTF-8 JSON file, size and nesting checked before parsing, or a one-line BadInput saying why not
    (every JSON robaudit reads comes through here or :func:`parse_json`: a hostile file must not crash it)."""
    text = read_text(path, what, hint, max_bytes=MAX_DOCUMENT_BYTES)
    return parse_json(text, f"{what} {str(path)!r}", hint)


def read_toml(path: Path, what: str = "file", hint: str | None = None) -> tuple[dict[str, Any], str]:
    """A UTF-8 TOML file checked like :func:`read_json`: (its tables, its text)."""
    text = read_text(path, what, hint, max_bytes=MAX_DOCUMENT_BYTES)
    return parse_toml(text, f"{what} {str(path)!r}", hint), text


def read_model(model: type[M], path: Path, what: str, hint: str | None = None) -> M:
    """A JSON file validated as ``model`` (cards, specs): one BadInput line for unreadable or invalid files."""
    raw = read_json(path, what, hint)
    return validate(model, raw, where=f"{what} {str(path)!r} is invalid", hint=hint)


def read_npy(path: Path, what: str = "array", hint: str | None = None):
    """A numeric ``.npy`` array (never pickles), or a one-line BadInput that says what the file is instead:
    an ``.npz`` archive, a pickle (never loaded), a truncated or unrelated file."""
    import numpy as np

    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise BadInput(f"{what} {str(p)!r} does not exist", hint) from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} {str(p)!r}: {os_error_text(exc)}", hint) from None
    if head.startswith(b"PK"):
        raise BadInput(f"{what} {str(p)!r} is an .npz archive, not a .npy array", hint)
    if head[:1] == b"\x80":
        raise BadInput(f"{what} {str(p)!r} is a Python pickle, not a .npy array (never loaded: it could run code)",
                       hint)
    if not head.startswith(b"\x93NUMPY"):
        raise BadInput(f"{what} {str(p)!r} is not a .npy file", hint)
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{what} {str(p)!r} is not a readable .npy array: {why}", hint) from None
    if arr.dtype.kind not in "fiub":
        raise BadInput(f"{what} {str(p)!r} holds {arr.dtype} values, not numbers", hint)
    return arr


# ---- output folders: preflight, lock, where to put what cannot be written -----------------------
def os_error_text(exc: OSError) -> str:
    """``exc`` as a short reason ('No space left on device'), without the path repeated."""
    return exc.strerror or str(exc) or type(exc).__name__


#: errno values that mean the user pointed at a place that cannot be written (bad input, exit 2);
#: anything else while writing (a full disk, an I/O error) is a runtime failure (exit 3)
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT}


def write_failure(exc: OSError, path: Path, what: str = "output", hint: str | None = None) -> RobauditError:
    """A one-line error for a failed write: BadInput for a place that cannot be written, else RuntimeFailure."""
    msg = f"cannot write {what} {str(path)!r}: {os_error_text(exc)}"
    if exc.errno in _USER_ERRNOS:
        return BadInput(msg, hint or "pass a path you can write to")
    return RuntimeFailure(msg, hint or "free disk space or check the device, then re-run")


def preflight_dir(folder: Path, what: str = "--out") -> Path:
    """Check, before any compute, that ``folder`` can hold outputs: create it and write (then delete) a probe.

    A read-only folder, a file in its place or a parent that is a file is BadInput (exit 2) now, instead
    of a traceback after the work is done."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{what} {str(folder)!r} is a file, not a folder", "pass a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BadInput(f"{what} {str(folder)!r} cannot be created: a part of its path is a file",
                       "pass a folder path whose parents are folders") from None
    except OSError as exc:
        raise BadInput(f"{what} {str(folder)!r} cannot be created: {os_error_text(exc)}",
                       "pass a folder you can write to") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".robaudit-probe-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"robaudit write probe\n")
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as exc:
        raise BadInput(f"{what} {str(folder)!r} is not writable: {os_error_text(exc)}",
                       "pass a folder you can write to, or fix its permissions") from None
    return folder


def preflight_file(path: Path, what: str = "--out") -> Path:
    """Check that ``path`` can be written as a file: not a folder, its folder creatable and writable."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{what} {str(p)!r} is a folder, not a file", f"pass a file path for {what}")
    preflight_dir(p.parent, what=f"the folder of {what}")
    return p


def fallback_dirs(kind: str) -> list[Path]:
    """Where to keep what cannot go where it was asked (crash logs, rescued perturbations), best first:
    ``$ROBAUDIT_HOME/<kind>`` (default ~/.cache/robaudit), then the system temp folder."""
    home = Path(os.environ.get("ROBAUDIT_HOME") or "~/.cache/robaudit").expanduser()
    return [home / kind, Path(tempfile.gettempdir()) / f"robaudit-{kind}"]


def keep_somewhere(kind: str, name: str, write) -> Path | None:
    """``write(path)`` into the first usable :func:`fallback_dirs` folder; the path, or None if none worked."""
    for folder in fallback_dirs(kind):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            write(path)
            return path
        except OSError:
            continue
    return None


def stamp() -> str:
    """``YYYYmmdd-HHMMSS-<pid>``: a file-name prefix unique per process and second."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


LOCK_NAME = ".robaudit.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OSError:
        return True
    return True


class OutputLock:
    """A lock file in an output folder holding pid, host and command, taken before any compute.

    A second live run into the same folder is refused (BadInput, naming the first). A lock left by a
    process that no longer runs on this host (SIGKILL, power loss) is taken over with a message, so
    killing a run and re-running the same command keeps resuming. A lock from another host cannot be
    checked and is refused with a hint to delete it. The lock file is created whole (hard link of a
    written temporary file), so a reader never sees half a lock.
    """

    def __init__(self, folder: Path, what: str = "--out"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.token = uuid.uuid4().hex
        self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500]}

    def _create(self) -> bool:
        """Create the lock file with our record; False if one exists."""
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f"{LOCK_NAME}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._record(), f)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system: exclusive create instead
                try:
                    fd2 = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd2, "w", encoding="utf-8") as f:
                    json.dump(self._record(), f)
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def owner(self) -> dict | None:
        """The current lock record, or None when there is none or it cannot be read."""
        try:
            rec = parse_json(read_text(self.path, "lock", max_bytes=64 * 1024), "lock")
        except BadInput:
            return None
        return rec if isinstance(rec, dict) else None

    def acquire(self) -> None:
        for _ in range(5):
            try:
                if self._create():
                    self.held = True
                    return
                rec = self.owner()
                if rec is None and time.time() - self.path.stat().st_mtime < 10:
                    time.sleep(0.2)  # being written by a process without hard links
                    continue
                self._take_over_or_refuse(rec)
            except FileNotFoundError:  # the lock went away between two looks: try again
                if not self.folder.is_dir():
                    raise BadInput(f"{self.what} {str(self.folder)!r} does not exist") from None
            except OSError as exc:
                raise BadInput(f"cannot lock {self.what} {str(self.folder)!r}: {os_error_text(exc)}",
                               "pass a folder you can write to") from None
        raise BadInput(f"cannot lock {self.what} {str(self.folder)!r}: other runs keep taking it",
                       f"pass another {self.what}")

    def _take_over_or_refuse(self, rec: dict | None) -> None:
        from robaudit.core.console import err

        pid, host = (rec or {}).get("pid"), (rec or {}).get("host")
        here = host == socket.gethostname()
        if isinstance(pid, int) and (not here or _pid_alive(pid)):
            since = f", since {rec['started']}" if rec.get("started") else ""
            raise BadInput(f"{self.what} {str(self.folder)!r} is in use by another robaudit run (pid {pid} on "
                           f"{host}{since})",
                           f"wait for it, or pass another {self.what}; if no run uses it, delete {self.path}")
        who = f"pid {pid} on {host}" if isinstance(pid, int) else "an unreadable lock"
        err.print(f"[yellow]warning:[/] taking over the lock of an earlier run in {self.folder} ({who} no longer "
                  "runs)", soft_wrap=True, highlight=False, markup=True)
        stale = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{self.token[:8]}")
        try:
            os.rename(self.path, stale)  # only one of several contenders wins the rename
            stale.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.held and (self.owner() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False


def write_crash_log(text: str) -> Path | None:
    """Write a traceback to ``$ROBAUDIT_HOME/logs/`` (else the temp folder); the path, or None."""
    return keep_somewhere("logs", f"{stamp()}-crash.log", lambda p: p.write_text(text, encoding="utf-8"))


def is_step_summary(path: str | Path) -> bool:
    """Whether ``path`` is GitHub's ``$GITHUB_STEP_SUMMARY`` (written by appending, never overwritten)."""
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    return bool(step) and Path(path).resolve() == Path(step).resolve()
