"""Helpers that damage a corpus on purpose, to prove what a computation did not read."""

from __future__ import annotations

from pathlib import Path


def spoil_chunks(corpus) -> int:
    """Overwrite every chunk file of a Zarr v3 corpus (under ``.../c/``) with bytes no
    codec decodes, keeping every ``zarr.json``; returns how many were overwritten. A
    computation that still succeeds afterwards read none of the corpus's chunks."""
    corpus = Path(corpus)
    spoiled = 0
    for f in corpus.rglob("*"):
        if f.is_file() and "c" in f.relative_to(corpus).parts and f.name != "zarr.json":
            f.write_bytes(b"not a chunk")
            spoiled += 1
    return spoiled
