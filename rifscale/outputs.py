"""The one owner of output directories: the only code in rifscale that deletes anything.

Every output (corpus, run, groups, validation, report) is written into a hidden sibling
``.NAME.partial-XXXXXXXX`` and moved into place only when complete (:func:`atomic_dirs`),
so a crash never leaves a partial output under the requested name. An existing output
is replaced only when asked (``overwrite``) *and* only when rifscale made it: each
output carries a small marker file (:data:`MARKER`); runs and corpora made before the
marker existed are recognised by their manifest / format attribute. Anything else is
refused, untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from .errors import OutputExistsError

#: File every output directory written by rifscale holds (JSON: {"rifscale_output": kind}).
MARKER = ".rifscale-output"


def made_by_rifscale(path: Path) -> bool:
    """Whether ``path`` is a directory rifscale wrote (and may therefore replace)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / MARKER).is_file():
        return True
    for name, key in (("manifest.json", "rifscale_run"), ("zarr.json", "rifscale_format")):  # older outputs
        try:
            doc = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if key in doc or key in doc.get("attributes", {}):
            return True
    return False


def mark(path: Path, kind: str) -> None:
    """Mark a directory as rifscale's own (so that ``--overwrite`` may replace it later)."""
    (Path(path) / MARKER).write_text(json.dumps({"rifscale_output": kind}))


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless overwriting, and never one rifscale did not make."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"{str(out)!r} already exists; choose another --out, or pass --overwrite to replace it."
        )
    if not made_by_rifscale(out):
        raise OutputExistsError(
            f"{str(out)!r} exists and was not made by rifscale (no {MARKER} marker, manifest or corpus "
            "format attribute), so --overwrite will not delete it. Choose another path, or remove it yourself."
        )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; an old one (checked to be rifscale's) is
    moved aside first and deleted only after the new one is in place."""
    old = None
    if out.exists():
        check_output(out, overwrite=True)
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)  # put the old output back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dirs(outs: dict[str, Path], *, overwrite: bool, kind: str):
    """Yield ``{name: temporary directory}`` (created, empty, marked) for each output; on
    success move them all into place, on failure delete the temporaries and keep the old
    outputs. ``kind`` goes into each marker."""
    outs = {name: Path(p) for name, p in outs.items()}
    for out in outs.values():
        check_output(out, overwrite=overwrite)
    tmps = {}
    try:
        for name, out in outs.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
            tmp.mkdir()
            mark(tmp, f"{kind}/{name}")
            tmps[name] = tmp
        yield tmps
        for name, out in outs.items():
            _replace_dir(tmps[name], out)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: Path, *, overwrite: bool, kind: str):
    """:func:`atomic_dirs` for one output: yields its temporary directory."""
    with atomic_dirs({kind: out}, overwrite=overwrite, kind=kind) as tmps:
        yield tmps[kind]
