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
assigned to their nearest centroid). Later layers are either retrained on all points
(train_rq with a reference) or updated online with the new points only (extend_rq).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onesearch_tasks.sid.embedders import l2_normalize
from onesearch_tasks.storage import StorageError, save_npy_atomic, write_json_atomic

logger = logging.getLogger(__name__)

MODEL_META_FILE = "rq_model.json"
MODEL_FORMAT_VERSION = 1
ASSIGN_BATCH_ROWS = 65_536
# Mini-batch size of the online codebook update in incremental runs.
ONLINE_BATCH_ROWS = 4_096


class RQError(ValueError):
    """Invalid RQ settings or a model that does not fit the data."""


@dataclass(frozen=True)
class RQSettings:
    """Training settings; see RQConfig for their meaning."""

    k: tuple[int, ...]
    balanced_type: int = 0
    normalize_residuals: bool = False
    niter: int = 6
    seed: int = 1234
    max_points_per_centroid: int = 1024
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
    # Wall-clock seconds per layer of the training that built this model; not saved, so
    # that reruns write byte-identical model files.
    layer_seconds: list[float] = field(default_factory=list)

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
        # cap_k may have trained fewer centroids than k; the meta file records how many.
        sizes = meta.get("codebook_sizes") or list(k[:standard_layers])
        for layer, (codebook, size) in enumerate(zip(codebooks, sizes), start=1):
            if codebook.shape[0] != int(size):
                raise StorageError(
                    f"RQ codebook {folder / f'rq_codebook_{layer}.npy'} has {codebook.shape[0]} rows, but {MODEL_META_FILE} "
                    f"says layer {layer} has {int(size)} (k={k[layer - 1]}); the model folder is corrupt, rebuild with mode=full"
                )
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
        # Small balanced parents are clustered on purpose; faiss would warn for each one.
        min_points_per_centroid=1,
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
    """Train one k-means per parent. Returns (parent_ids, offsets, centroids, local codes).

    Parents with at most k_last points (at 1024-1024-1024 usually nearly all) are handled
    together with array operations: each point becomes its own centroid, in group order.
    Only the larger parents run k-means, one call each.
    """
    rows = parents.shape[0]
    order, unique, bounds = _group_by_parent(parents)
    sizes = np.diff(bounds)
    small = sizes <= k_last
    offsets = np.concatenate(([0], np.cumsum(np.where(small, sizes, k_last)))).astype(np.int64)
    centroids = np.empty((int(offsets[-1]), residual.shape[1]), dtype=np.float32)
    local = np.empty(rows, dtype=np.int64)

    group_of_sorted = np.repeat(np.arange(unique.shape[0]), sizes)
    rank = np.arange(rows, dtype=np.int64) - bounds[:-1][group_of_sorted]
    in_small = small[group_of_sorted]
    members = order[in_small]
    local[members] = rank[in_small]
    centroids[offsets[group_of_sorted[in_small]] + rank[in_small]] = residual[members]

    large_groups = np.flatnonzero(~small)
    for group in large_groups:
        members = order[bounds[group] : bounds[group + 1]]
        points = residual[members]
        block = kmeans(points, k_last, settings, seed_offset=int(unique[group]))
        centroids[offsets[group] : offsets[group + 1]] = block
        local[members] = nearest_centroid(points, block)
    logger.info("balanced last layer: %d parents, %d trained with k-means, %d with one centroid per point", unique.shape[0], large_groups.shape[0], unique.shape[0] - large_groups.shape[0])
    return unique.astype(np.int64), offsets, centroids, local


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

    Layers 1..referlayer come from reference, the rest are trained. With referlayer at
    the depth nothing is trained, which is extend_rq without an update. Returns
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
    if reference is not None and referlayer >= depth:
        model, codes, residual, _ = extend_rq(reference, vectors, depth)
        return model, codes, residual

    residual = np.array(vectors, dtype=np.float32, copy=True)
    codes = np.empty((rows, depth), dtype=np.int64)
    standard_layers = depth if settings.balanced_type == 0 else depth - 1
    codebooks: list[np.ndarray] = []
    layer_seconds: list[float] = []
    for layer in range(standard_layers):
        started = time.perf_counter()
        if reference is not None and layer < referlayer:
            centroids = reference.codebooks[layer]
            source = "reference"
        else:
            centroids = kmeans(residual, _layer_k(layer, settings.k[layer], rows, settings), settings, seed_offset=layer)
            source = "trained"
        codes[:, layer] = nearest_centroid(residual, centroids)
        residual = _subtract(residual, centroids, codes[:, layer], settings.normalize_residuals)
        codebooks.append(centroids)
        layer_seconds.append(time.perf_counter() - started)
        logger.info("RQ layer %d/%d (%s): k=%d, the %d keys assigned here use %d codes", layer + 1, depth, source, centroids.shape[0], rows, np.unique(codes[:, layer]).shape[0])

    model = RQModel(tuple(settings.k), dim, settings.balanced_type, settings.normalize_residuals, codebooks)
    model.layer_seconds = layer_seconds
    if settings.balanced_type:
        started = time.perf_counter()
        parents = model.parents_of(codes[:, : depth - 1])
        model.parent_ids, model.parent_offsets, model.parent_centroids, local = _train_balanced(residual, parents, settings.k[-1], settings)
        positions = np.searchsorted(model.parent_ids, parents)
        residual -= model.parent_centroids[model.parent_offsets[positions] + local]
        if settings.normalize_residuals:
            l2_normalize(residual)
        codes[:, depth - 1] = parents * settings.k[-1] + local
        layer_seconds.append(time.perf_counter() - started)
        logger.info("RQ layer %d/%d (balanced type %d): %d parents stored", depth, depth, settings.balanced_type, model.parent_ids.shape[0])
    return model, codes, residual


def _online_update(centroids: np.ndarray, counts: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Run one pass of sequential (mini-batch) k-means starting from centroids (k, d).

    counts (k,) weighs each starting centroid by the keys it already holds. Each batch of
    ONLINE_BATCH_ROWS points is assigned, then every centroid it touched moves to the
    weighted mean of its old position and its new points. Returns the new centroids; the
    inputs are not modified.
    """
    updated = np.array(centroids, dtype=np.float32, copy=True)
    weights = counts.astype(np.float64, copy=True)
    for start in range(0, points.shape[0], ONLINE_BATCH_ROWS):
        batch = points[start : start + ONLINE_BATCH_ROWS]
        nearest = nearest_centroid(batch, updated)
        hits = np.bincount(nearest, minlength=updated.shape[0])
        sums = np.zeros(updated.shape, dtype=np.float64)
        np.add.at(sums, nearest, batch)
        touched = np.flatnonzero(hits)
        total = weights[touched] + hits[touched]
        updated[touched] = (updated[touched] * weights[touched, None] + sums[touched]) / total[:, None]
        weights[touched] = total
    return updated


def extend_rq(reference: RQModel, vectors: np.ndarray, referlayer: int, reference_codes: np.ndarray | None = None) -> tuple[RQModel, np.ndarray, np.ndarray, int]:
    """Encode new vectors (n, d) on top of a reference model.

    Layers 1..referlayer keep the reference codebooks. Each later standard layer starts
    from the reference codebook and is moved by one online pass over the new vectors (see
    _online_update). Each centroid's weight is the number of reference keys it holds, counted
    in reference_codes (m, depth), the codes of the keys that stay. The new vectors are then
    assigned to the updated codebook. The work grows with n, not with the catalog,
    and the reference keys keep their codes. A balanced last layer is never updated here:
    new vectors are assigned to its stored centroids.

    With referlayer equal to the depth nothing is updated, which is plain encoding.
    Returns (model, codes (n, depth) int64, residuals (n, d) float32, points under unseen parents).
    """
    if vectors.ndim != 2 or vectors.shape[1] != reference.dim:
        raise RQError(f"vectors have shape {vectors.shape}, but the RQ model expects dimension {reference.dim}")
    if not 0 <= referlayer <= reference.depth:
        raise RQError(f"referlayer={referlayer} must be between 0 and the model depth {reference.depth}")
    rows, depth = vectors.shape[0], reference.depth
    standard_layers = depth if reference.balanced_type == 0 else depth - 1
    codes = np.zeros((rows, depth), dtype=np.int64)
    residual = np.array(vectors, dtype=np.float32, copy=True)
    codebooks: list[np.ndarray] = []
    updated_layers: list[int] = []
    for layer in range(standard_layers):
        centroids = reference.codebooks[layer]
        if layer >= referlayer and rows:
            counts = np.zeros(centroids.shape[0], dtype=np.int64) if reference_codes is None else np.bincount(reference_codes[:, layer], minlength=centroids.shape[0])
            centroids = _online_update(centroids, counts, residual)
            updated_layers.append(layer + 1)
        if rows:
            codes[:, layer] = nearest_centroid(residual, centroids)
            residual = _subtract(residual, centroids, codes[:, layer], reference.normalize_residuals)
        codebooks.append(centroids)

    model = RQModel(reference.k, reference.dim, reference.balanced_type, reference.normalize_residuals, codebooks,
                    reference.parent_ids, reference.parent_offsets, reference.parent_centroids)
    unseen = 0
    if reference.balanced_type and rows:
        parents = model.parents_of(codes[:, : depth - 1])
        local, centroid_rows, unseen = _assign_balanced(model, residual, parents)
        seen = centroid_rows >= 0
        residual[seen] -= model.parent_centroids[centroid_rows[seen]]
        if reference.normalize_residuals:
            l2_normalize(residual)
        codes[:, depth - 1] = parents * reference.k[-1] + local
    model.stats = {"updated_layers": updated_layers, "encoded_points": rows, "unseen_parent_points": unseen}
    if updated_layers:
        logger.info("RQ online update of layers %s with %d new points", updated_layers, rows)
    return model, codes, residual, unseen


def encode_rq(model: RQModel, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Assign vectors with a frozen model. Returns (codes (n, depth), residuals (n, d), unseen parents)."""
    _, codes, residual, unseen = extend_rq(model, vectors, model.depth)
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
