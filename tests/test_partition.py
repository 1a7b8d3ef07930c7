"""Work split to fit the cluster (rifscale.partition) and the ingest layout defaults."""

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

import rifscale
from rifscale.errors import ConfigError
from rifscale.engine.factor import gpu_available
from rifscale.corpus.ingest import default_chunk_rows
from rifscale.engine.partition import MIN_BLOCK_ROWS, block_rows, prepare_split, rechunk_split
from rifscale.testing import make_problem

from .conftest import corpus_of, rel_err


def test_block_rows_keep_every_thread_busy_within_memory():
    # 50 000 x 1024 float32 stored as one chunk (the case the issue measured): 2 threads
    # get at least 3 blocks each
    rows = block_rows(50_000, 4096, threads=2, worker_memory=8 * 2**30)
    assert -(-50_000 // rows) >= 6
    # block bytes bounded by 1/16 of the worker's memory
    assert block_rows(10**7, 4096, threads=2, worker_memory=2**30) * 4096 <= 2**30 // 16
    # tiny problems are not cut below MIN_BLOCK_ROWS
    assert block_rows(1000, 64, threads=16, worker_memory=2**33) == MIN_BLOCK_ROWS


def test_coarse_stored_chunks_are_split_evenly_and_rows_stay_aligned():
    pr = make_problem(10_000, 5, seed=1)
    c = corpus_of(pr, 10_000)  # one stored chunk
    split = rechunk_split(c.train, 2_000)
    assert split.X.chunks[0] == (2_000,) * 5 and split.y.chunks == split.ids.chunks == (split.X.chunks[0],)
    np.testing.assert_array_equal(split.X.compute(), pr.X)
    uneven = rechunk_split(corpus_of(pr, 7_000).train, 2_000)  # 7000 + 3000 rows stored
    assert uneven.X.chunks[0] == (1750, 1750, 1750, 1750, 1500, 1500)  # no block spans two stored chunks
    assert rechunk_split(c.train, 9_000) is c.train  # within 1.5x: left as stored


@pytest.mark.parametrize("persist", ["always", "never"])
def test_persisting_or_streaming_gives_the_same_run(persist, synchronous):
    pr = make_problem(3_000, 12, seed=2, dtype=np.float32)
    c = corpus_of(pr, 3_000)
    base = rifscale.attribute(c, lam=0.5, test_subset="all", persist="never")
    other = rifscale.attribute(c, lam=0.5, test_subset="all", persist=persist)
    assert other.layout["persisted"] == (persist == "always")
    assert rel_err(other.theta, base.theta) <= 1e-12
    assert rel_err(other.leverage.compute(), base.leverage.compute()) <= 1e-12


def test_prepare_split_records_its_choices(synchronous):
    pr = make_problem(20_000, 4, seed=3)
    split, record = prepare_split(corpus_of(pr, 20_000).train, persist="never")
    assert record["blocks"] == len(split.X.chunks[0]) >= 2 and not record["persisted"]


@pytest.mark.skipif(gpu_available(), reason="checks the error raised where no GPU is visible")
def test_gpu_device_without_a_gpu_is_a_clear_error(small_problem, synchronous):
    pr, _ = small_problem
    with pytest.raises(ConfigError, match=r"device='gpu' needs CuPy and a CUDA device.*device='cpu'"):
        rifscale.attribute(corpus_of(pr, 50), device="gpu")
    with pytest.raises(ConfigError, match="'device' parameter must be one of"):
        rifscale.RunConfig(device="tpu")


def test_default_chunks_hold_about_32_mib_split_evenly():
    assert default_chunk_rows(200_000, 384 * 4) == 20_000  # 10 chunks, none padded
    assert default_chunk_rows(1_000, 16) == 1_000
    rows = default_chunk_rows(1_000_003, 768 * 4)
    assert rows * 768 * 4 <= 33 * 2**20 and -(-1_000_003 // rows) * rows - 1_000_003 < -(-1_000_003 // rows)


def _lazy_rows(block_info=None):
    (start, stop), _ = block_info[None]["array-location"]
    rng = np.random.default_rng(start)
    return rng.normal(size=(stop - start, 6)).astype(np.float32)


@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_ingest_writes_dask_arrays_chunk_parallel_with_the_chosen_compressor(tmp_path, compressor):
    X = da.map_blocks(_lazy_rows, chunks=((500,) * 8, (6,)), dtype=np.float32, meta=np.empty((0, 0), np.float32))
    y = (X[:, 0] > 0).astype(np.int8)
    with dask.config.set(scheduler="threads"):
        c = rifscale.ingest(tmp_path / "c.zarr", train_X=X, train_y=y, chunk_rows=1000, compressor=compressor)
    np.testing.assert_array_equal(c.train.X.compute(), X.compute())
    assert c.attrs["compressor"] == compressor and c.train.X.chunks[0] == (1000,) * 4
    stored = zarr.open_array(str(tmp_path / "c.zarr" / "train" / "X"))
    assert (len(stored.compressors) == 0) == (compressor == "none")
    same = rifscale.ingest(tmp_path / "d.zarr", train_X=X.compute(), train_y=y.compute(), chunk_rows=1000)
    assert same.attrs["content_sha256"] == c.attrs["content_sha256"]  # the hash is of content, not layout
