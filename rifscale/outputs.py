"""The one owner of output directories: the only code in rifscale that deletes anything.

Every output (corpus, run, groups, validation, report) is written into a hidden sibling
``.NAME.partial-XXXXXXXX`` and moved into place only when complete (:func:`atomic_dirs`),
so a crash never leaves a partial output under the requested name. Rules, each enforced
here and nowhere else:

* **One writer per output.** A job holds an exclusive lock on ``.NAME.lock`` (an
  ``flock``, which the kernel releases when the process dies, even by SIGKILL) from its
  first check to its final move (:func:`claim`); a second job on the same output fails at
  once, naming the holder. Temporaries a killed job left behind are removed by the next
  job that claims the output.
* **Nothing rifscale did not make is replaced or deleted.** An existing output is
  replaced only when asked (``overwrite``) *and* only when rifscale made it: each output
  carries a small marker file (:data:`MARKER`); runs and corpora made before the marker
  existed are recognised by their manifest / format attribute. Anything else is refused,
  untouched.
* **No output over an input.** An output equal to, inside, or containing one of the job's
  inputs is refused before any work (:func:`check_inputs`).
* **The final move never replaces unasked.** If the output appeared while the job ran, the
  job fails and the newcomer is left as it is; a failed move puts the old output back.
* **A file system that refuses the output is one error, not a traceback.** A full disk,
  a read-only mount or a denied permission while a job writes its output is an
  :class:`~rifscale.errors.OutputWriteError` naming the output; the temporaries go.
* **Missing parents are created only below an existing, writable directory** other than
  the file-system root (a typo such as ``--out /runs/today`` must not make ``/runs``).

Single files (``rifscale export``) carry their marker beside them: ``.NAME.rifscale-output``
records the size and modification time the file had when rifscale wrote it, so a file
edited or replaced since is not rifscale's any more.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from .errors import ConfigError, OutputBusyError, OutputExistsError, OutputWriteError

log = logging.getLogger(__name__)

#: File every output directory written by rifscale holds (JSON: {"rifscale_output": kind}).
MARKER = ".rifscale-output"

#: Every output this process moved into place, in order: an interrupted command says
#: which of its outputs it had finished.
published: list[Path] = []


def _location(location) -> str:
    """A path, URL or path object (``pathlib``, ``upath.UPath``) as a string; a UPath over
    fsspec keeps its protocol (``s3://bucket/x``)."""
    if getattr(location, "protocol", "") not in ("", "file", "local"):
        return str(location)
    return os.fspath(location)


def is_url(location) -> bool:
    """A location fsspec resolves (``s3://``, ``gs://``, ``memory://``...), not a local path.
    ``file://`` URLs are local paths (see :func:`local_path`)."""
    location = _location(location)
    return "://" in location and not location.startswith("file://")


def filesystem(location):
    """fsspec's ``(filesystem, path)`` of a path or URL. A URL whose fsspec backend is not
    installed (``s3://`` without s3fs) is a :class:`ConfigError` naming the package."""
    import fsspec
    from fsspec.registry import known_implementations

    location = _location(location)
    try:
        return fsspec.core.url_to_fs(location)
    except ImportError as exc:
        protocol = location.split("://", 1)[0]
        package = known_implementations.get(protocol, {}).get("class", "fsspec").split(".", 1)[0]
        fix = f"install it (pip install {package})" if package != "fsspec" else f"{exc}"
        raise ConfigError(f"Reading {location!r} needs the fsspec backend for {protocol}://, which is not "
                          f"installed: {fix}.") from None


def local_path(location) -> str:
    """A local path or ``file://`` URL (``file:///abs/path``, ``file://localhost/abs``,
    percent-encoded) as a plain path; any other URL unchanged."""
    from urllib.parse import unquote, urlsplit

    location = _location(location)
    if not location.startswith("file://"):
        return location
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{location!r} names the host {parts.netloc!r}; a file:// URL must name this machine "
                          "(file:///path or file://localhost/path).")
    return unquote(parts.path)


def output_path(location, kind: str = "output") -> Path:
    """The local path an output goes to: a path, or a ``file://`` URL. Other URLs
    (``s3://``...) are refused: the rules above need a POSIX file system (an ``flock`` and
    an atomic rename), which object stores do not offer. Write locally or to a shared file
    system and copy the finished output (e.g. ``fsspec``'s ``put``); rifscale reads
    corpora and runs from URLs. Every output is resolved here before anything else looks
    at it (``pathlib.Path`` would fold ``s3://b`` into ``s3:/b``)."""
    if is_url(location):
        location = _location(location)
        raise ConfigError(
            f"Cannot write the {kind} to {location!r}: rifscale writes outputs only to a file system with "
            "locks and atomic renames, so that a killed or raced job never leaves a partial output. Write "
            "it to a local or shared path, then copy the finished directory to the object store."
        )
    return Path(local_path(location))


def made_by_rifscale(path: Path) -> bool:
    """Whether ``path`` is a directory or file rifscale wrote (and may therefore replace)."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_file():
        return _file_marker(path) == _file_stamp(path)
    if not path.is_dir():
        return False
    if (path / MARKER).is_file():
        return True
    for name, key in (("manifest.json", "rifscale_run"), ("zarr.json", "rifscale_format")):  # older outputs
        try:
            doc = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and (key in doc or key in (doc.get("attributes") or {})):
            return True
    return False


def mark(path: Path, kind: str) -> None:
    """Mark a directory as rifscale's own (so that ``--overwrite`` may replace it later)."""
    (Path(path) / MARKER).write_text(json.dumps({"rifscale_output": kind}))


def _marker_of_file(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARKER}")


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _file_marker(path: Path) -> dict | None:
    """The stamp the marker beside the file ``path`` records, or None."""
    try:
        doc = json.loads(_marker_of_file(path).read_text())
    except (OSError, ValueError):
        return None
    return {k: doc.get(k) for k in ("size", "mtime_ns")} if isinstance(doc, dict) else None


def _another(flag: str | None) -> str:
    """How the user names another output: "choose another --out, or " (nothing for the
    outputs a command places itself, such as RUN/groups)."""
    return f"choose another {flag}, or " if flag else ""


def check_output(out: Path, *, overwrite: bool, flag: str | None = "--out") -> None:
    """Refuse an existing ``out`` unless overwriting, and never one rifscale did not make.
    ``flag`` is the option that names the output (None where the command places it)."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(f"{str(out)!r} already exists; {_another(flag)}pass --overwrite to replace it.")
    if not made_by_rifscale(out):
        raise OutputExistsError(
            f"{str(out)!r} exists and was not made by rifscale (no {MARKER} marker, manifest or corpus "
            "format attribute), so --overwrite will not delete it. Choose another path, or remove it yourself."
        )


def check_inputs(out: Path, inputs) -> None:
    """Refuse an output named "." or "..", and one that is, lies inside, or contains one of
    ``inputs`` (paths; URLs other than ``file://``, None and other values are ignored): writing it would destroy the input."""
    if Path(out).name in ("", ".", ".."):
        raise ConfigError(
            f"The output {str(out)!r} is an existing directory by its very name, not a new output. Name the "
            "directory to create inside it, e.g. --out runs/today."
        )
    o = Path(os.path.realpath(out))
    for inp in inputs:
        if not isinstance(inp, (str, os.PathLike)):
            continue
        if is_url(inp):  # an input at a URL: never the local file system written here
            continue
        i = Path(os.path.realpath(local_path(inp)))
        if o == i:
            how = "is"
        elif i in o.parents:
            how = "lies inside"
        elif o in i.parents:
            how = "contains"
        else:
            continue
        raise ConfigError(
            f"The output {str(out)!r} {how} the input {str(inp)!r}; writing it would delete or corrupt "
            "the input. Choose an output path outside the inputs."
        )


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


#: errno values of a file system that will not take the output: full, read-only, denied.
_UNWRITABLE = {errno.ENOSPC: "Free some space there", errno.EDQUOT: "Free some space there (disk quota)",
               errno.EROFS: "Write it to a writable file system", errno.EACCES: "Write it where you have permission",
               errno.EPERM: "Write it where you have permission"}


@contextlib.contextmanager
def _storage_errors(out: Path, flag: str | None):
    """Turn a write to ``out`` (its temporaries, lock and parents included) that the file
    system refuses into one :class:`OutputWriteError`. A denied permission elsewhere (an
    input) stays what it is."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, OutputWriteError) or exc.errno not in _UNWRITABLE:
            raise
        where = Path(os.path.abspath(os.fsdecode(exc.filename))) if exc.filename else None
        parent = Path(os.path.abspath(out)).parent
        # the output's parents (being created), or the output, its temporaries, lock and marker
        mine = where is None or where == parent or where in parent.parents or (
            parent in where.parents and where.relative_to(parent).parts[0].lstrip(".").startswith(out.name))
        if exc.errno in (errno.EACCES, errno.EPERM) and not mine:
            raise
        also = f" ({where})" if where is not None and where != Path(os.path.abspath(out)) else ""
        fix = _UNWRITABLE[exc.errno] + (f" or choose another {flag}" if flag else "")
        raise OutputWriteError(
            f"Cannot write {str(out)!r}: {exc.strerror} [{errno.errorcode[exc.errno]}]{also}. {fix}, then run the "
            "same command again."
        ) from None


def _make_parent(out: Path) -> None:
    """Create the missing parents of ``out``, only below an existing directory other than
    the file-system root (one that refuses them fails in :func:`_storage_errors`)."""
    parent = Path(os.path.abspath(out)).parent
    if parent.is_dir():
        return
    missing = [parent, *(p for p in parent.parents if not p.exists())]
    base, top = missing[-1].parent, missing[-1]
    if base == Path(base.anchor):
        raise ConfigError(
            f"The directory {str(top)!r} does not exist, and rifscale creates missing directories only below an "
            f"existing one other than the file-system root. Check the path, or create it first (mkdir -p {parent})."
        )
    if not base.is_dir():
        raise ConfigError(f"Cannot create {str(parent)!r}: {str(base)!r} is not a directory.")
    parent.mkdir(parents=True, exist_ok=True)
    log.info("created the directory %s", parent)


@contextlib.contextmanager
def claim(out: Path, *, flag: str | None = "--out"):
    """Hold the exclusive right to write ``out`` (see the module notes); removes the
    temporaries of earlier, killed jobs on the same output. Storage errors of the job
    (full, read-only) become one :class:`OutputWriteError` (``flag``: the option naming
    ``out``, for the fix)."""
    out = Path(out)
    with _storage_errors(out, flag):
        _make_parent(out)
        lock = lock_path(out)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 400).decode(errors="replace").strip() or "unknown holder"
                os.close(fd)
                raise OutputBusyError(
                    f"Another rifscale job is writing {str(out)!r} ({holder}). Wait for it to finish, or "
                    "choose another output path."
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a lock file its holder just removed
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, _holder().encode())
            for stale in out.parent.glob(f".{out.name}.partial-*"):
                remove(stale)  # a killed job's temporary: nobody else may write this output now
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)


def remove(path: Path) -> None:
    """Delete a directory rifscale made (checked); anything else is left alone."""
    path = Path(path)
    if made_by_rifscale(path):
        shutil.rmtree(path, ignore_errors=True)


def remove_within(root: Path, name: str) -> None:
    """Delete ``root/name`` (a stage being rewritten inside an output rifscale is
    writing); refused when ``root`` is not rifscale's."""
    root = Path(root)
    if not made_by_rifscale(root):
        raise OutputExistsError(f"{str(root)!r} was not made by rifscale; nothing inside it will be deleted.")
    if (root / name).exists():
        shutil.rmtree(root / name)


def publish(tmp: Path, out: Path, *, overwrite: bool, flag: str | None = "--out") -> None:
    """Move the finished directory ``tmp`` to ``out``. An existing ``out`` is replaced only
    with ``overwrite`` and only if rifscale made it: it is moved aside first and deleted
    only after the new one is in place; a failed move puts it back."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"{str(out)!r} appeared while this job ran (another process made it); it was left as it "
                f"is and this job's result discarded. {_another(flag).capitalize()}pass --overwrite to replace it."
            )
        check_output(out, overwrite=True)
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)  # fails (ENOTEMPTY) if a non-empty out appeared since the check
    except OSError as exc:
        if old is not None:
            os.replace(old, out)  # put the old output back
        elif out.exists():
            raise OutputExistsError(
                f"{str(out)!r} appeared while this job ran (another process made it); it was left as it is."
            ) from exc
        raise
    published.append(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _wait_for_zarr_io(timeout: float = 30.0) -> None:
    """Let zarr's IO thread finish the writes in flight. A main-thread zarr call cut short
    by Ctrl-C or SIGTERM goes on there, and would otherwise re-create files in a
    temporary directory just deleted. (zarr keeps its event loop in ``zarr.core.sync``.)"""
    import asyncio
    import sys

    zsync = sys.modules.get("zarr.core.sync")
    loop = (getattr(zsync, "loop", None) or [None])[0] if zsync else None
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def drain():
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout + 1)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM (delivered after the block) in the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def atomic_dirs(outs: dict[str, Path], *, overwrite: bool, kind: str, inputs=(), flag: str | None = "--out"):
    """Yield ``{name: temporary directory}`` (created, empty, marked) for each output; on
    success move them all into place, on failure (or interruption) delete the temporaries
    and keep the old outputs. ``kind`` goes into each marker; ``inputs`` are the job's
    input paths (:func:`check_inputs`); ``flag`` is the option naming the outputs (None
    where the command places them itself, e.g. ``RUN/groups``)."""
    outs = {name: output_path(p, kind) for name, p in outs.items()}
    for out in outs.values():
        check_inputs(out, inputs)
    tmps = {}
    with contextlib.ExitStack() as stack:
        for out in outs.values():
            stack.enter_context(claim(out, flag=flag))
            check_output(out, overwrite=overwrite, flag=flag)
        try:
            for name, out in outs.items():
                tmps[name] = tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
                tmp.mkdir()
                mark(tmp, f"{kind}/{name}")
            yield tmps
            for name, out in outs.items():
                publish(tmps[name], out, overwrite=overwrite, flag=flag)
        finally:
            with _signals_held():  # a second Ctrl-C must not cut the clean-up short
                _wait_for_zarr_io()
                for tmp in tmps.values():
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: Path, *, overwrite: bool, kind: str, inputs=(), flag: str | None = "--out"):
    """:func:`atomic_dirs` for one output: yields its temporary directory."""
    with atomic_dirs({kind: out}, overwrite=overwrite, kind=kind, inputs=inputs, flag=flag) as tmps:
        yield tmps[kind]


@contextlib.contextmanager
def atomic_file(out: Path, *, overwrite: bool, kind: str = "file", inputs=()):
    """Yield a temporary path beside ``out``; on success move it to ``out`` and mark it
    (an existing file is replaced only with ``overwrite`` and only if rifscale wrote it;
    a directory never), else delete it."""
    out = output_path(out, kind)
    check_inputs(out, inputs)
    with claim(out):
        if out.is_dir():
            raise OutputExistsError(f"{str(out)!r} is a directory; give a file name to write.")
        check_output(out, overwrite=overwrite)
        tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            yield tmp
            if (out.exists() or out.is_symlink()) and not (overwrite and made_by_rifscale(out)):
                raise OutputExistsError(f"{str(out)!r} appeared while this job ran; it was left as it is.")
            marker = _marker_of_file(out)
            with _signals_held():  # no Ctrl-C between the marker and the move
                marker.write_text(json.dumps({"rifscale_output": kind, **_file_stamp(tmp)}))
                os.replace(tmp, out)
            published.append(out)
        finally:
            with _signals_held():
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
