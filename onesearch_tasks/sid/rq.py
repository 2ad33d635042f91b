"""Residual k-means quantization (RQ) with faiss, full or on top of a reference model.

Layer l clusters the residuals left by layers 1..l-1 into k_l centroids. With
``normalize_residuals`` each residual is L2-normalized before the next layer.

Balanced last layer (``balanced_type``):

- 0: the last layer is one k-means over all residuals, like the others.
- 1: one k-means per (L1, L2) parent, parent id = c1 * k2 + c2.
- 2: one k-means per L2 parent, parent id = c2.

The last-layer code is global: parent * k_last + local. A parent with no more points than
k_last gives each point its own centroid. Only parents that occur are stored, as one
(total centroids, d) array with per-parent offsets, since a dense k1 * k2 * k3 * d array is
far too large at 1024-1024-1024.

Incremental mode: layers 1..referlayer reuse the reference model's codebooks (points are
assigned to their nearest centroid); later layers are retrained on all points.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onesearch_tasks.sid.embedders import l2_normalize
from onesearch_tasks.storage import StorageError, save_npy_atomic, write_json_atomic

logger = logging.getLogger(__name__)

MODEL_META_FILE = "rq_model.json"
MODEL_FORMAT_VERSION = 1
ASSIGN_BATCH_ROWS = 65_536


class RQError(ValueError):
    """Invalid RQ settings or a model that does not fit the data."""


@dataclass(frozen=True)
class RQSettings:
    """Training settings; see RQConfig for their meaning."""

    k: tuple[int, ...]
    balanced_type: int = 0
    normalize_residuals: bool = False
    niter: int = 25
    seed: int = 1234
    max_points_per_centroid: int = 256
    cap_k: bool = False


@dataclass
class RQModel:
    """Codebooks of one RQ model.

    codebooks: one (k_l', d) float32 array per standard layer (all layers when
    balanced_type is 0, else all but the last). k_l' < k_l only when cap_k lowered it.
    parent_ids (P,), parent_offsets (P + 1,), parent_centroids (offsets[-1], d): the
    balanced last layer; centroids of parent_ids[i] are rows offsets[i]:offsets[i + 1].
    """

    k: tuple[int, ...]
    dim: int
    balanced_type: int
    normalize_residuals: bool
    codebooks: list[np.ndarray]
    parent_ids: np.ndarray | None = None
    parent_offsets: np.ndarray | None = None
    parent_centroids: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.k)

    @property
    def parent_space(self) -> int:
        if self.balanced_type == 1:
            return self.k[0] * self.k[1]
        if self.balanced_type == 2:
            return self.k[1]
        return 0

    def code_space(self, layer: int) -> int:
        """Number of possible codes at a 0-based layer (global ids for a balanced last layer)."""
        if self.balanced_type and layer == self.depth - 1:
            return self.parent_space * self.k[-1]
        return self.k[layer]

    def parents_of(self, upper_codes: np.ndarray) -> np.ndarray:
        """Parent ids from the codes of the layers above the last one, shape (n, depth - 1)."""
        if self.balanced_type == 1:
            return upper_codes[:, 0] * self.k[1] + upper_codes[:, 1]
        if self.balanced_type == 2:
            return upper_codes[:, 1].copy()
        raise RQError("parents exist only for a balanced last layer (balanced_type 1 or 2)")

    # --- persistence -------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for layer, codebook in enumerate(self.codebooks, start=1):
            save_npy_atomic(folder / f"rq_codebook_{layer}.npy", codebook)
        if self.balanced_type:
            save_npy_atomic(folder / "rq_last_parent_ids.npy", self.parent_ids)
            save_npy_atomic(folder / "rq_last_parent_offsets.npy", self.parent_offsets)
            save_npy_atomic(folder / "rq_last_centroids.npy", self.parent_centroids)
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            "k": list(self.k),
            "dim": self.dim,
            "balanced_type": self.balanced_type,
            "normalize_residuals": self.normalize_residuals,
            "codebook_sizes": [int(codebook.shape[0]) for codebook in self.codebooks],
            "stats": self.stats,
        }
        # The meta file goes last: a folder without it is an incomplete model.
        write_json_atomic(folder / MODEL_META_FILE, meta)

    @classmethod
    def load(cls, folder: Path) -> "RQModel":
        """Load and check a saved model; raise StorageError naming what is missing or wrong."""
        meta_path = folder / MODEL_META_FILE
        if not meta_path.is_file():
            raise StorageError(f"RQ model folder {folder} has no {MODEL_META_FILE}; it is incomplete, rebuild with mode=full")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            k = tuple(int(value) for value in meta["k"])
            dim = int(meta["dim"])
            balanced_type = int(meta["balanced_type"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise StorageError(f"RQ model meta {meta_path} is corrupt ({error}); rebuild with mode=full") from error

        standard_layers = len(k) if balanced_type == 0 else len(k) - 1
        codebooks = [_load_array(folder / f"rq_codebook_{layer}.npy", dim) for layer in range(1, standard_layers + 1)]
        model = cls(k, dim, balanced_type, bool(meta.get("normalize_residuals", False)), codebooks, stats=meta.get("stats", {}))
        if balanced_type:
            model.parent_ids = _load_index_array(folder / "rq_last_parent_ids.npy")
            model.parent_offsets = _load_index_array(folder / "rq_last_parent_offsets.npy")
            model.parent_centroids = _load_array(folder / "rq_last_centroids.npy", dim)
            if model.parent_offsets.shape != (model.parent_ids.shape[0] + 1,) or int(model.parent_offsets[-1]) != model.parent_centroids.shape[0]:
                raise StorageError(f"RQ model {folder}: last-layer offsets do not match the centroid array; rebuild with mode=full")
        return model


def _read_model_array(path: Path, description: str) -> np.ndarray:
    if not path.is_file():
        raise StorageError(f"missing {description} {path}; the model folder is incomplete, rebuild with mode=full")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise StorageError(f"corrupt {description} {path} ({error}); rebuild with mode=full") from error


def _load_index_array(path: Path) -> np.ndarray:
    array = _read_model_array(path, "RQ parent array")
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise StorageError(f"RQ parent array {path} has shape {array.shape} and dtype {array.dtype}, expected 1-D integers")
    return array.astype(np.int64, copy=False)


def _load_array(path: Path, dim: int) -> np.ndarray:
    array = _read_model_array(path, "RQ codebook")
    if array.ndim != 2 or array.shape[1] != dim:
        raise StorageError(f"RQ codebook {path} has shape {array.shape}, expected (k, {dim})")
    return np.ascontiguousarray(array, dtype=np.float32)


# --- k-means and assignment ------------------------------------------------------------


def kmeans(points: np.ndarray, k: int, settings: RQSettings, seed_offset: int = 0) -> np.ndarray:
    """Train faiss k-means and return centroids, shape (k, d) float32."""
    import faiss

    clustering = faiss.Kmeans(
        points.shape[1],
        k,
        niter=settings.niter,
        seed=settings.seed + seed_offset,
        max_points_per_centroid=settings.max_points_per_centroid,
        verbose=False,
    )
    clustering.train(np.ascontiguousarray(points, dtype=np.float32))
    return np.ascontiguousarray(clustering.centroids, dtype=np.float32)


def nearest_centroid(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (L2) for each point, shape (n,) int64."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    codes = np.empty(points.shape[0], dtype=np.int64)
    for start in range(0, points.shape[0], ASSIGN_BATCH_ROWS):
        batch = np.ascontiguousarray(points[start : start + ASSIGN_BATCH_ROWS], dtype=np.float32)
        _, nearest = index.search(batch, 1)
        codes[start : start + batch.shape[0]] = nearest[:, 0]
    return codes


def _subtract(residual: np.ndarray, centroids: np.ndarray, codes: np.ndarray, normalize: bool) -> np.ndarray:
    residual -= centroids[codes]
    if normalize:
        l2_normalize(residual)
    return residual


def _layer_k(layer: int, k: int, rows: int, settings: RQSettings) -> int:
    if k <= rows:
        return k
    if settings.cap_k:
        logger.warning("RQ layer %d: k=%d exceeds the %d rows; capped to %d (rq.cap_k is true)", layer + 1, k, rows, rows)
        return rows
    raise RQError(
        f"RQ layer {layer + 1}: k={k} is larger than the {rows} rows to cluster; lower that layer's k "
        f"(for example rq.k with {rows} or less there) or set rq.cap_k: true to cap it and log it"
    )


# --- balanced last layer -------------------------------------------------------------------


def _group_by_parent(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (order, unique parents, group start offsets) so order[starts[i]:starts[i+1]] is group i."""
    order = np.argsort(parents, kind="stable")
    unique, starts = np.unique(parents[order], return_index=True)
    return order, unique, np.append(starts, parents.shape[0])


def _train_balanced(residual: np.ndarray, parents: np.ndarray, k_last: int, settings: RQSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train one k-means per parent. Returns (parent_ids, offsets, centroids, local codes)."""
    order, unique, bounds = _group_by_parent(parents)
    local = np.empty(parents.shape[0], dtype=np.int64)
    centroid_blocks: list[np.ndarray] = []
    offsets = np.zeros(unique.shape[0] + 1, dtype=np.int64)
    trained = 0
    for group, parent in enumerate(unique):
        members = order[bounds[group] : bounds[group + 1]]
        points = residual[members]
        if members.shape[0] <= k_last:
            centroids = points.copy()
            local[members] = np.arange(members.shape[0])
        else:
            centroids = kmeans(points, k_last, settings, seed_offset=int(parent))
            local[members] = nearest_centroid(points, centroids)
            trained += 1
        centroid_blocks.append(centroids)
        offsets[group + 1] = offsets[group] + centroids.shape[0]
    logger.info("balanced last layer: %d parents, %d trained with k-means, %d with one centroid per point", unique.shape[0], trained, unique.shape[0] - trained)
    return unique.astype(np.int64), offsets, np.concatenate(centroid_blocks).astype(np.float32), local


def _assign_balanced(model: RQModel, residual: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Assign points to their parent's stored centroids. Returns (local codes, centroid rows, unseen).

    NOTE: a parent that the reference model never saw has no centroids. Its points get
    local code 0 and keep their residual. The count is returned so that the run can report
    it, and a full rebuild gives such parents their own centroids.
    """
    assert model.parent_ids is not None
    assert model.parent_offsets is not None
    assert model.parent_centroids is not None
    local = np.zeros(parents.shape[0], dtype=np.int64)
    rows = np.full(parents.shape[0], -1, dtype=np.int64)
    order, unique, bounds = _group_by_parent(parents)
    positions = np.searchsorted(model.parent_ids, unique)
    unseen = 0
    for group, parent in enumerate(unique):
        members = order[bounds[group] : bounds[group + 1]]
        position = positions[group]
        if position >= model.parent_ids.shape[0] or model.parent_ids[position] != parent:
            unseen += members.shape[0]
            continue
        start, stop = model.parent_offsets[position], model.parent_offsets[position + 1]
        local[members] = nearest_centroid(residual[members], model.parent_centroids[start:stop])
        rows[members] = start + local[members]
    return local, rows, unseen


# --- training and encoding ----------------------------------------------------------------------


def check_reference(reference: RQModel, settings: RQSettings, dim: int) -> None:
    if tuple(reference.k) != tuple(settings.k):
        raise RQError(f"reference model has k={'-'.join(map(str, reference.k))} but this run asks for k={'-'.join(map(str, settings.k))}; run with mode=full to rebuild, or use the reference's k")
    if reference.dim != dim:
        raise RQError(f"reference model has dimension {reference.dim} but the embeddings have {dim}; run with mode=full to rebuild")
    if reference.balanced_type != settings.balanced_type:
        raise RQError(f"reference model has balanced_type={reference.balanced_type} but this run asks for {settings.balanced_type}; run with mode=full to rebuild")
    if reference.normalize_residuals != settings.normalize_residuals:
        raise RQError("reference model and this run differ in normalize_residuals; run with mode=full to rebuild")


def train_rq(vectors: np.ndarray, settings: RQSettings, reference: RQModel | None = None, referlayer: int = 0) -> tuple[RQModel, np.ndarray, np.ndarray]:
    """Train (or partly reuse) an RQ model on vectors (n, d) float32.

    Layers 1..referlayer come from reference, the rest are trained. Returns
    (model, codes (n, depth) int64, final residuals (n, d) float32).
    """
    rows, dim = vectors.shape
    depth = len(settings.k)
    if reference is None:
        referlayer = 0
    else:
        check_reference(reference, settings, dim)
    if rows == 0:
        raise RQError("no vectors to quantize: the run has no valid queries or items")

    residual = np.array(vectors, dtype=np.float32, copy=True)
    codes = np.empty((rows, depth), dtype=np.int64)
    standard_layers = depth if settings.balanced_type == 0 else depth - 1
    codebooks: list[np.ndarray] = []
    for layer in range(standard_layers):
        if reference is not None and layer < referlayer:
            centroids = reference.codebooks[layer]
            source = "reference"
        else:
            centroids = kmeans(residual, _layer_k(layer, settings.k[layer], rows, settings), settings, seed_offset=layer)
            source = "trained"
        codes[:, layer] = nearest_centroid(residual, centroids)
        residual = _subtract(residual, centroids, codes[:, layer], settings.normalize_residuals)
        codebooks.append(centroids)
        logger.info("RQ layer %d/%d (%s): k=%d, the %d keys assigned here use %d codes", layer + 1, depth, source, centroids.shape[0], rows, np.unique(codes[:, layer]).shape[0])

    model = RQModel(tuple(settings.k), dim, settings.balanced_type, settings.normalize_residuals, codebooks)
    if settings.balanced_type:
        parents = model.parents_of(codes[:, : depth - 1])
        if reference is not None and referlayer >= depth:
            model.parent_ids, model.parent_offsets, model.parent_centroids = reference.parent_ids, reference.parent_offsets, reference.parent_centroids
            local, rows_used, unseen = _assign_balanced(model, residual, parents)
            model.stats["unseen_parent_points"] = unseen
            seen = rows_used >= 0
            residual[seen] -= model.parent_centroids[rows_used[seen]]
        else:
            model.parent_ids, model.parent_offsets, model.parent_centroids, local = _train_balanced(residual, parents, settings.k[-1], settings)
            positions = np.searchsorted(model.parent_ids, parents)
            residual -= model.parent_centroids[model.parent_offsets[positions] + local]
        if settings.normalize_residuals:
            l2_normalize(residual)
        codes[:, depth - 1] = parents * settings.k[-1] + local
        logger.info("RQ layer %d/%d (balanced type %d): %d parents stored", depth, depth, settings.balanced_type, model.parent_ids.shape[0])
    return model, codes, residual


def encode_rq(model: RQModel, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Assign vectors with a frozen model. Returns (codes (n, depth), residuals (n, d), unseen parents)."""
    if vectors.ndim != 2 or vectors.shape[1] != model.dim:
        raise RQError(f"vectors have shape {vectors.shape}, but the RQ model expects dimension {model.dim}")
    settings = RQSettings(k=model.k, balanced_type=model.balanced_type, normalize_residuals=model.normalize_residuals)
    if vectors.shape[0] == 0:
        return np.zeros((0, model.depth), dtype=np.int64), np.zeros((0, model.dim), dtype=np.float32), 0
    assigned, codes, residual = train_rq(vectors, settings, reference=model, referlayer=model.depth)
    unseen = int(assigned.stats.get("unseen_parent_points", 0))
    return codes, residual, unseen


def cluster_statistics(codes: np.ndarray, model: RQModel) -> dict:
    """Per-layer cluster sizes: used codes, code space, min/median/max/p99 points per used code."""
    layers = []
    for layer in range(codes.shape[1]):
        _, sizes = np.unique(codes[:, layer], return_counts=True)
        layers.append({
            "layer": layer + 1,
            "code_space": model.code_space(layer),
            "used_codes": int(sizes.shape[0]),
            "min_size": int(sizes.min()) if sizes.size else 0,
            "median_size": float(np.median(sizes)) if sizes.size else 0.0,
            "p99_size": float(np.percentile(sizes, 99)) if sizes.size else 0.0,
            "max_size": int(sizes.max()) if sizes.size else 0,
        })
    return {"layers": layers, "points": int(codes.shape[0])}
