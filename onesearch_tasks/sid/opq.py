"""OPQ codes for the fine positions of a SID.

The index is faiss ``OPQ{m},IVF1,PQ{m}x{bits}`` with the inner-product metric, trained on
the last-layer RQ residuals of queries and items together. With one inverted list the
coarse code takes zero bytes, so ``sa_encode`` returns only the packed PQ codes, which are
unpacked here with numpy for all rows at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from onesearch_tasks.storage import StorageError, atomic_path

logger = logging.getLogger(__name__)

OPQ_INDEX_FILE = "opq.faiss"


class OPQError(ValueError):
    """Invalid OPQ settings, or a saved index that does not fit the data."""


def factory_string(m: int, bits: int) -> str:
    return f"OPQ{m},IVF1,PQ{m}x{bits}"


def train_opq(vectors: np.ndarray, m: int, bits: int, seed: int = 1234, max_train_rows: int | None = None):
    """Train the OPQ index on vectors (n, d) float32 and return it (a faiss.IndexPreTransform)."""
    import faiss

    rows, dim = vectors.shape
    if dim % m:
        raise OPQError(f"OPQ m={m} must divide the embedding dimension {dim}; pick m from the divisors of {dim}")
    codes_per_position = 1 << bits
    train_rows = rows if max_train_rows is None else min(rows, max_train_rows)
    if train_rows < codes_per_position:
        raise OPQError(
            f"OPQ with bits={bits} needs at least {codes_per_position} training rows, got {train_rows} "
            f"({rows} rows, opq.max_train_rows={max_train_rows}); lower opq.bits "
            f"(for example {max(1, train_rows.bit_length() - 1)}), raise opq.max_train_rows or add data"
        )
    train = vectors
    if max_train_rows is not None and rows > max_train_rows:
        picked = np.random.default_rng(seed).choice(rows, size=max_train_rows, replace=False)
        train = vectors[np.sort(picked)]
    index = faiss.index_factory(dim, factory_string(m, bits), faiss.METRIC_INNER_PRODUCT)
    rotation = faiss.downcast_VectorTransform(index.chain.at(0))
    # OPQ training runs an inner PQ; supplying it lets us fix its seed and quiet faiss's
    # "please provide at least N training points" warning, which floods task logs.
    inner_pq = faiss.ProductQuantizer(dim, m, bits)
    _configure_clustering(inner_pq.cp, seed)
    rotation.pq = inner_pq
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    _configure_clustering(ivf.pq.cp, seed)
    _configure_clustering(ivf.cp, seed)
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    rotation.pq = None  # only used during training; inner_pq is freed when this returns
    logger.info("OPQ %s trained on %d of %d rows", factory_string(m, bits), train.shape[0], rows)
    return index


def _configure_clustering(parameters, seed: int) -> None:
    """Fix the k-means seed (so reruns give the same index) and allow small training sets."""
    parameters.seed = seed
    parameters.min_points_per_centroid = 1


def pq_layout(index) -> tuple[int, int]:
    """Return (m, bits) of the PQ inside a trained OPQ index."""
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    return int(ivf.pq.M), int(ivf.pq.nbits)


def encode_opq(index, vectors: np.ndarray) -> np.ndarray:
    """Return OPQ codes of shape (n, m) int64, each in [0, 2**bits)."""
    if vectors.ndim != 2 or vectors.shape[1] != index.d:
        raise OPQError(f"vectors have shape {vectors.shape}, but the OPQ index expects dimension {index.d}")
    m, bits = pq_layout(index)
    if vectors.shape[0] == 0:
        return np.zeros((0, m), dtype=np.int64)
    packed = index.sa_encode(np.ascontiguousarray(vectors, dtype=np.float32))
    return unpack_codes(packed, m, bits)


def unpack_codes(packed: np.ndarray, m: int, bits: int) -> np.ndarray:
    """Unpack faiss PQ codes (rows of bytes, each code least significant bit first) to (n, m)."""
    rows = packed.shape[0]
    if bits == 8:
        return packed[:, :m].astype(np.int64)
    bit_matrix = np.unpackbits(packed, axis=1, bitorder="little")[:, : m * bits].reshape(rows, m, bits)
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (bit_matrix.astype(np.int64) * weights).sum(axis=2)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of unpack_codes: (n, m) codes to faiss's packed bytes."""
    rows, m = codes.shape
    bit_matrix = ((codes[:, :, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(rows, m * bits)
    return np.packbits(bit_matrix, axis=1, bitorder="little")


def save_opq(index, folder: Path) -> Path:
    import faiss

    target = folder / OPQ_INDEX_FILE
    with atomic_path(target) as tmp:
        faiss.write_index(index, str(tmp))
    return target


def load_opq(folder_or_file: Path, expected_dim: int | None = None):
    """Read a saved OPQ index; raise StorageError or OPQError with the fix when it cannot be used."""
    import faiss

    path = Path(folder_or_file)
    if path.is_dir():
        path = path / OPQ_INDEX_FILE
    if not path.is_file():
        raise StorageError(f"OPQ index not found: {path}; rebuild the version with mode=full")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        raise StorageError(f"OPQ index {path} cannot be read ({error}); rebuild the version with mode=full") from error
    if expected_dim is not None and index.d != expected_dim:
        raise OPQError(f"OPQ index {path} has dimension {index.d} but the embeddings have {expected_dim}; rebuild with mode=full")
    return index
