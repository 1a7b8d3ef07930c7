"""The corpus: where the data comes in (docs/design.md §5).

A corpus is a Zarr group holding a training split and a test split (X, y, ids), chunked
by rows. This package builds one from sources (:mod:`.sources`: .npy/.npz files, Zarr
arrays, URLs, Parquet tables) with :mod:`.ingest`, opens and validates it
(:mod:`.model`: :class:`~rifscale.corpus.model.Corpus`, :class:`~rifscale.corpus.model.Split`,
the corpus fingerprint), checks its data (:mod:`.checks`: chunks present, non-finite
values, outlying scales, each with an error that names the fix) and verifies the chunk
digests recorded at ingest (:mod:`.verify`). It sits above the engine: the engine takes
the corpus's dask arrays and never opens a store.
"""
