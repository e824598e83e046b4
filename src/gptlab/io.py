"""Atomic file writes (temp file in the same folder, fsync, rename), small JSON helpers, TOML value literals, and
the value checks every boundary shares: `coerce` (a value against a type) and `Range` (a declared interval)."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tempfile
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab import GptlabError

_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# what the file system refuses (full, over quota, read-only, not permitted, file too large): one line, not a traceback
FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def fs_reason(where: str | Path, code: int | None = None, needed: Callable[[], int] | None = None) -> str | None:
    """Why the file system refuses a write at `where`: errno `code` when the error had one, else what the
    folder's file system says (read-only, not writable, less free space than `needed()` bytes). A full disk adds
    the space free there (and about what `needed()` asks for). None when none of these applies."""
    probe = Path(where)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return os.strerror(code) if code in FS_ERRNOS else None
    free = st.f_bavail * st.f_frsize
    if code is None:
        if st.f_flag & os.ST_RDONLY:
            code = errno.EROFS
        elif not os.access(probe, os.W_OK):
            code = errno.EACCES
        elif needed is not None and free < needed():
            code = errno.ENOSPC
    if code not in FS_ERRNOS:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        need = f"it needs about {mib(needed())}, " if needed is not None else ""
        return f"{os.strerror(code)} ({need}{mib(free)} free{'' if need else ' there'})"
    return os.strerror(code)


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The exception's first non-empty line (stripped, cut to `limit` characters when given), or its type name when
    the message is empty: what a one-line error quotes of an exception a library raised."""
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return line if limit is None else line[:limit]


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def fs_error(e: OSError, path: str | Path | None = None) -> GptlabError | None:
    """`e` as one line naming `path` (else the error's own file name) when the file system refused a write;
    for a full disk with the space free there. None for any other error (a bug should keep its traceback)."""
    if e.errno not in FS_ERRNOS:
        return None
    where = Path(path if path is not None else e.filename or ".")
    return GptlabError(f"{where}: cannot write: {fs_reason(where, e.errno)}")


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> None:
    """Call writer(tmp_path) then move tmp_path over path; a crash leaves the old file or none."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (fs_error(e, path) or e) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and fs_error(e, path):
            raise fs_error(e, path) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, w)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | Path, obj: Any) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSONL, skipping lines that are not a JSON value in UTF-8: a torn last line (a crash mid-append), or a
    damaged line elsewhere (each line is decoded on its own, so one bad byte costs that line only)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for raw in p.read_bytes().splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            out.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
    return out


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def commit_dir(tmp: str | Path, final: str | Path) -> None:
    """Make a fully written temp folder durable and move it to `final` (replacing an old one)."""
    tmp, final = Path(tmp), Path(final)
    for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        for f in d.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(d)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def parse_value(text: str) -> Any:
    """A `--set` or intervention value: a TOML literal if it parses (numbers, booleans, lists, quoted strings),
    else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# --------------------------------------------------------------------------------------------
# Value checks shared by the config, the CLI, interventions and the server
# --------------------------------------------------------------------------------------------
class BoundaryError(ValueError):
    """A value outside its declared type or range (each boundary turns it into its own one-line error)."""


@dataclass(frozen=True)
class Range:
    """A declared interval in the usual notation: "[1, inf)", "(0, inf)", "[0, 1)", "[-1, 4294967295]".
    Non-finite numbers (nan, inf) and booleans are never inside."""

    text: str

    @property
    def bounds(self) -> tuple[float, float, bool, bool]:
        """(lo, hi, lo_closed, hi_closed)."""
        m = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^\s\])]+)\s*([\])])", self.text)
        if not m:
            raise ValueError(f"bad interval {self.text!r}: expected e.g. '[0, 1)' or '(0, inf)'")
        lo, hi = (float(t) if any(c in t for c in ".ein") else int(t) for t in (m[2], m[3]))
        return lo, hi, m[1] == "[", m[4] == "]"

    def __post_init__(self):
        self.bounds  # noqa: B018 - a malformed interval fails where it is declared

    def __contains__(self, x) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)):
            return False
        lo, hi, lo_closed, hi_closed = self.bounds
        return (lo <= x if lo_closed else lo < x) and (x <= hi if hi_closed else x < hi)

    def __str__(self) -> str:
        lo, hi, lo_closed, _ = self.bounds
        return f"{'>=' if lo_closed else '>'} {lo}" if hi == math.inf else f"in {self.text}"


def coerce(value: Any, tp, where: str) -> Any:
    """Check/convert one value against a type (bool, int, float, str, list[...] or Any); raise a one-line
    BoundaryError naming `where`. TOML strings such as "3" or "true" (from `--set`) are accepted for numbers and
    booleans; a bool is never a number and a non-integral float never an int."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # --set a.b=x,y
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise BoundaryError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise BoundaryError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise BoundaryError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise BoundaryError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise BoundaryError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise BoundaryError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise BoundaryError(f"{where}: expected a string, got {value!r}")
    raise BoundaryError(f"{where}: unsupported type {getattr(tp, '__name__', tp)}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Names that become paths, and folders gptlab writes into
# --------------------------------------------------------------------------------------------
def plain_name(name: Any, what: str) -> str:
    """`name` when it is one plain path component (not empty, not . or .., no / or \\, not absolute, no NUL or
    control character); else a one-line GptlabError naming `what` and the name."""
    why = None
    if not isinstance(name, str):
        why = f"expected a string, got {type(name).__name__}"
    elif not name:
        why = "is empty"
    elif os.path.isabs(name) or name.startswith(("/", "\\")):
        why = "is an absolute path"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        why = "contains a path separator"
    elif name in (".", ".."):
        why = "names a folder above or the folder itself"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "contains a control character"
    if why:
        raise GptlabError(f"{what} {name!r}: {why}; expected a plain name (no /, \\ or ..)")
    return name


def confined(parent: str | Path, name: Any, what: str) -> Path:
    """parent / name, refused (a one-line GptlabError: what, the name, why) unless `name` is a plain name
    (plain_name) and the path resolves inside `parent` (a symlink pointing out of it is refused too)."""
    parent = Path(parent)
    path = parent / plain_name(name, what)
    if not path.resolve().is_relative_to(parent.resolve()):
        raise GptlabError(
            f"{what} {name!r}: resolves outside {parent} (to {path.resolve()}); expected a name inside it"
        )
    return path


OWNER_FILE = ".gptlab-owner"  # what gptlab wrote a folder as: {"kind": "experiment"}; see claim_dir


def dir_owner(path: str | Path) -> str | None:
    """The kind of folder gptlab wrote `path` as (its OWNER_FILE), None without one."""
    try:
        d = json.loads((Path(path) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d.get("kind") if isinstance(d, dict) and isinstance(d.get("kind"), str) else None


_FORCE_ADVICE = "choose a new or empty folder (or --force to write into it anyway)"


def check_dir(
    path: str | Path,
    kind: str,
    what: str,
    force: bool = False,
    written_before: Callable[[Path], bool] | None = None,
    foreign: str = "files gptlab did not write",
    advice: str = _FORCE_ADVICE,
) -> Path:
    """Refuse to write into `path` what gptlab did not write there, with one line naming `what` and the path:
    a path that exists and is not a folder (always), or a folder holding files unless gptlab wrote it as `kind`
    (its OWNER_FILE says so, or `written_before(path)`: the kind's own test for a folder written before owner files
    existed). `force` accepts such a folder (the user's choice). `foreign` and `advice` word the refusal.
    Returns `path`; writes nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GptlabError(
            f"{what} {path}: exists and is not a folder; gptlab writes a folder there, so choose "
            f"another path (or move the file)"
        )
    if force or not path.is_dir():
        return path
    entries = sorted(p.name for p in path.iterdir())
    owner = dir_owner(path)
    if not entries or owner == kind or (owner is None and written_before is not None and written_before(path)):
        return path
    if owner is not None:
        raise GptlabError(
            f"{what} {path}: is a gptlab {owner} folder, not {'an' if kind[0] in 'aeiou' else 'a'} "
            f"{kind} folder; {advice}"
        )
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise GptlabError(f"{what} {path}: holds {foreign} ({shown}); {advice}")


def claim_dir(
    path: str | Path, kind: str, what: str, force: bool = False, written_before: Callable[[Path], bool] | None = None
) -> Path:
    """check_dir, then create the folder and record that gptlab writes it as `kind` (OWNER_FILE), so that the
    next command of the same kind (a resumed experiment, a second export) writes there again. Returns `path`."""
    path = check_dir(path, kind, what, force, written_before)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if dir_owner(path) != kind:
            atomic_write_json(path / OWNER_FILE, {"kind": kind})
    except OSError as e:
        raise (fs_error(e, path) or e) from None
    return path


# --------------------------------------------------------------------------------------------
# Reading the JSON files gptlab writes (final.json, meta.json, ...): a damaged file is one line naming it
# --------------------------------------------------------------------------------------------
def read_json(path: str | Path, hint: str = "") -> Any:
    """The JSON value in `path`. A file that is not UTF-8 JSON (torn, overwritten, forged) raises a one-line
    GptlabError naming the file, the place and the parser's message, then `hint` (what to do about it). A missing
    or unreadable file raises OSError as open() does."""
    p = Path(path)
    data = p.read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        why = f"not UTF-8 text (byte {e.start})"
    except json.JSONDecodeError as e:
        why = f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
    except RecursionError:
        why = "not usable JSON (nested too deeply)"
    raise GptlabError(f"{p}: {why}" + (f"; {hint}" if hint else ""))
