"""Tests for OPQ training, code extraction against faiss's own encoding, and index storage.

Training with bits=8 takes a few seconds, so each layout is trained once per module.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from onesearch_tasks.sid.opq import (
    OPQ_INDEX_FILE,
    OPQError,
    encode_opq,
    factory_string,
    load_opq,
    pack_codes,
    pq_layout,
    save_opq,
    train_opq,
    unpack_codes,
)
from onesearch_tasks.storage import StorageError

DIM = 8
M = 2
SEED = 7


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((256, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def indexes(vectors: np.ndarray) -> dict[int, object]:
    """Trained indexes by bits: 8 (the default layout) and 4."""
    return {bits: train_opq(vectors, M, bits, seed=SEED) for bits in (8, 4)}


def rebuild_rotated(index, codes: np.ndarray) -> np.ndarray:
    """Rebuild rotated vectors from codes with faiss's own PQ centroids and coarse centroid."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    m, bits = int(ivf.pq.M), int(ivf.pq.nbits)
    centroids = faiss.vector_to_array(ivf.pq.centroids).reshape(m, 1 << bits, index.d // m)
    coarse = ivf.quantizer.reconstruct(0)
    parts = [centroids[position, codes[:, position]] for position in range(m)]
    return np.concatenate(parts, axis=1) + coarse


def rotate(index, x: np.ndarray) -> np.ndarray:
    return faiss.downcast_VectorTransform(index.chain.at(0)).apply(np.ascontiguousarray(x, dtype=np.float32))


# --- training and encoding -----------------------------------------------------------------


def test_factory_string() -> None:
    assert factory_string(4, 8) == "OPQ4,IVF1,PQ4x8"


@pytest.mark.parametrize("bits", [8, 4])
def test_train_layout(indexes, bits: int) -> None:
    index = indexes[bits]

    assert pq_layout(index) == (M, bits)
    assert index.d == DIM
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT


@pytest.mark.parametrize("bits", [8, 4])
def test_encode_shape_and_range(vectors, indexes, bits: int) -> None:
    codes = encode_opq(indexes[bits], vectors)

    assert codes.shape == (vectors.shape[0], M)
    assert codes.dtype == np.int64
    assert codes.min() >= 0
    assert codes.max() < 1 << bits


@pytest.mark.parametrize("bits", [8, 4])
def test_codes_match_faiss_decoding(vectors, indexes, bits: int) -> None:
    index = indexes[bits]
    codes = encode_opq(index, vectors)

    rebuilt = rebuild_rotated(index, codes)
    decoded_rotated = rotate(index, index.sa_decode(index.sa_encode(vectors)))

    np.testing.assert_allclose(rebuilt, decoded_rotated, atol=1e-4)


@pytest.mark.parametrize("bits", [8, 4])
def test_pack_codes_matches_sa_encode(vectors, indexes, bits: int) -> None:
    index = indexes[bits]

    packed = pack_codes(encode_opq(index, vectors), bits)

    assert packed.dtype == np.uint8
    assert packed.tobytes() == index.sa_encode(vectors).tobytes()


@pytest.mark.parametrize(("m", "bits"), [(3, 4), (2, 5), (1, 12), (4, 8)])
def test_unpack_pack_round_trip(m: int, bits: int) -> None:
    codes = np.random.default_rng(0).integers(0, 1 << bits, size=(20, m), dtype=np.int64)

    packed = pack_codes(codes, bits)

    assert packed.shape == (20, (m * bits + 7) // 8)
    np.testing.assert_array_equal(unpack_codes(packed, m, bits), codes)


def test_unpack_lsb_first() -> None:
    # Two 4-bit codes 0x3 and 0xA share one byte, the first code in the low nibble: 0xA3.
    packed = np.array([[0xA3]], dtype=np.uint8)

    np.testing.assert_array_equal(unpack_codes(packed, 2, 4), [[3, 10]])


def test_encode_empty(indexes) -> None:
    codes = encode_opq(indexes[4], np.zeros((0, DIM), dtype=np.float32))

    assert codes.shape == (0, M)


def test_train_deterministic(vectors) -> None:
    first = train_opq(vectors[:64], M, 4, seed=SEED)
    second = train_opq(vectors[:64], M, 4, seed=SEED)

    assert faiss.serialize_index(first).tobytes() == faiss.serialize_index(second).tobytes()


def test_train_subsample_deterministic(vectors) -> None:
    first = train_opq(vectors, M, 4, seed=SEED, max_train_rows=40)
    second = train_opq(vectors, M, 4, seed=SEED, max_train_rows=40)

    assert faiss.serialize_index(first).tobytes() == faiss.serialize_index(second).tobytes()


# --- errors ------------------------------------------------------------------------------------


def test_train_m_not_dividing_dim_raises(vectors) -> None:
    with pytest.raises(OPQError) as caught:
        train_opq(vectors, 3, 4)

    assert "m=3" in str(caught.value)
    assert "dimension 8" in str(caught.value)


def test_train_too_few_rows_raises(vectors) -> None:
    with pytest.raises(OPQError) as caught:
        train_opq(vectors[:100], M, 8)

    assert "256 training rows" in str(caught.value)
    assert "got 100" in str(caught.value)


def test_train_sample_too_small_raises(vectors) -> None:
    with pytest.raises(OPQError, match="16"):
        train_opq(vectors[:64], M, 4, max_train_rows=8)


def test_encode_wrong_dim_raises(indexes) -> None:
    with pytest.raises(OPQError, match="expects dimension 8"):
        encode_opq(indexes[4], np.zeros((3, DIM + 4), dtype=np.float32))


def test_encode_one_dimensional_raises(indexes) -> None:
    with pytest.raises(OPQError, match="expects dimension 8"):
        encode_opq(indexes[4], np.zeros(DIM, dtype=np.float32))


# --- storage -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
def test_save_load_round_trip(tmp_path: Path, vectors, indexes, bits: int) -> None:
    index = indexes[bits]

    path = save_opq(index, tmp_path)
    loaded = load_opq(tmp_path, expected_dim=DIM)

    assert path == tmp_path / OPQ_INDEX_FILE
    assert faiss.serialize_index(loaded).tobytes() == faiss.serialize_index(index).tobytes()
    np.testing.assert_array_equal(encode_opq(loaded, vectors), encode_opq(index, vectors))


def test_load_by_file_path(tmp_path: Path, indexes) -> None:
    path = save_opq(indexes[4], tmp_path)

    assert pq_layout(load_opq(path)) == (M, 4)


def test_load_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not found"):
        load_opq(tmp_path)


def test_load_garbage_raises(tmp_path: Path) -> None:
    (tmp_path / OPQ_INDEX_FILE).write_bytes(b"this is not a faiss index")

    with pytest.raises(StorageError, match="cannot be read"):
        load_opq(tmp_path)


def test_load_wrong_dim_raises(tmp_path: Path, indexes) -> None:
    save_opq(indexes[4], tmp_path)

    with pytest.raises(OPQError, match="dimension 8 but the embeddings have 16"):
        load_opq(tmp_path, expected_dim=16)
