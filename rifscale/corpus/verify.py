"""Chunk digests recorded at ingest and ``rifscale verify``."""

from __future__ import annotations

import hashlib

import dask.array as da
import numpy as np
import zarr

from ..cluster import small_compute
from .model import Corpus, Split, zarr_member
from ..errors import CorpusError


#: Array of each split holding the sha256 digest of every row chunk (chunks, 32) uint8.
DIGESTS = "chunk_sha256"


def verify_corpus(corpus: Corpus) -> dict:
    """Re-read every chunk and compare its sha256 with the digest recorded at ingest.

    Raises a :class:`CorpusError` listing the chunks whose bytes changed (or that cannot
    be read); returns ``{"chunks", "bytes", "arrays"}`` when everything matches. Corpora
    written before per-chunk digests were stored are checked against ``content_sha256``
    as a whole."""
    if corpus.path is None:
        raise CorpusError("verify needs a corpus on disk (this one was built from in-memory arrays).")
    expected = corpus.attrs.get("content_sha256")
    if not expected:
        raise CorpusError(f"{corpus.path!r} records no content_sha256, so there is nothing to verify against; "
                          "re-ingest it with this rifscale to record one.")
    root = zarr.open_group(corpus.path, mode="r")
    splits = [(name, sp) for name, sp in (("train", corpus.train), ("test", corpus.test)) if sp is not None]
    digests = small_compute(*[plan_digests(sp) for _, sp in splits])
    bad, hasher = [], hashlib.sha256()
    for (name, sp), got in zip(splits, digests):
        hasher.update(np.ascontiguousarray(got).tobytes())
        stored = zarr_member(zarr_member(root, name, corpus.path), DIGESTS, corpus.path)
        if stored is not None:
            want = np.asarray(stored[...])
            if want.shape != got.shape:
                raise CorpusError(f"{corpus.path!r}: {name}/{DIGESTS} has shape {want.shape}, expected {got.shape}; "
                                  "the corpus was changed after ingest. Re-ingest it.")
            offsets = np.concatenate([[0], np.cumsum(sp.X.chunks[0])])
            for i in np.flatnonzero((want != got).any(axis=1)):
                bad.append(f"{name} row chunk {i} (rows {offsets[i]}-{offsets[i + 1] - 1})")
    if bad:
        raise CorpusError(
            f"{corpus.path!r}: {len(bad)} chunk(s) differ from what ingest wrote: {', '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''}. Their bytes changed on storage (bit flips, partial overwrites). "
            "Re-ingest the corpus from its sources."
        )
    if hasher.hexdigest() != expected:
        raise CorpusError(
            f"{corpus.path!r}: the content hash {hasher.hexdigest()[:16]}... differs from the {expected[:16]}... "
            "recorded at ingest: the stored data changed. Re-ingest the corpus from its sources."
        )
    n_chunks = sum(g.shape[0] for g in digests)
    n_bytes = sum(sp.X.nbytes + sp.y.nbytes + sp.ids.nbytes for _, sp in splits)
    return {"chunks": n_chunks, "bytes": int(n_bytes), "arrays": [f"{n}/{a}" for n, _ in splits for a in ("X", "y", "ids")]}


def plan_digests(split: Split) -> da.Array:
    return da.blockwise(_chunk_digest, "ij", split.X, "ik", split.y, "i", split.ids, "i",
                        new_axes={"j": 32}, adjust_chunks={"i": 1}, concatenate=True,
                        dtype=np.uint8, meta=np.empty((0, 0), dtype=np.uint8))


def row_numbers(x, block_info=None):
    start, stop = block_info[0]["array-location"][0]
    return np.arange(start, stop, dtype=np.int64)


def _chunk_digest(x, y, ids):
    h = hashlib.sha256()
    for part in (x, y, ids):
        h.update(_canonical_bytes(part))
    return np.frombuffer(h.digest(), dtype=np.uint8)[None, :]


def _canonical_bytes(part) -> bytes:
    """The bytes a digest covers: a numeric array's own; text ids' UTF-8, each after its
    length (uint64 little-endian), so that the digest does not depend on how NumPy lays the
    strings out in memory and no two id lists share one encoding."""
    part = np.asarray(part)
    if part.dtype.kind not in "UTO":
        return np.ascontiguousarray(part).tobytes()
    encoded = [str(v).encode("utf-8") for v in part.tolist()]
    lengths = np.fromiter(map(len, encoded), dtype="<u8", count=len(encoded))
    return lengths.tobytes() + b"".join(encoded)
