"""Source readers for ingest, one module per kind of source: arrays (.npy, .npz, Zarr,
URLs; :mod:`.arrays`) and Parquet tables (:mod:`.parquet`). Each yields row-chunked dask
arrays that :func:`rifscale.ingest` checks, rechunks and writes."""
