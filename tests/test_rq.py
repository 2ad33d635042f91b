"""Tests for residual k-means quantization: training, balanced last layers, reuse and storage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from onesearch_tasks.sid.rq import (
    MODEL_META_FILE,
    RQError,
    RQModel,
    RQSettings,
    cluster_statistics,
    encode_rq,
    extend_rq,
    train_rq,
)
from onesearch_tasks.storage import StorageError

K = (4, 4, 4)
ROWS = 600
DIM = 8
BALANCED_TYPES = (0, 1, 2)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((ROWS, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(vectors: np.ndarray) -> dict[int, tuple[RQModel, np.ndarray, np.ndarray]]:
    """One (model, codes, residuals) per balanced_type, trained on the shared vectors."""
    return {balanced_type: train_rq(vectors, RQSettings(k=K, balanced_type=balanced_type)) for balanced_type in BALANCED_TYPES}


def reconstruct(model: RQModel, codes: np.ndarray) -> np.ndarray:
    """Sum of the centroids that codes select, rebuilt from the model's public arrays."""
    total = np.zeros((codes.shape[0], model.dim), dtype=np.float64)
    for layer, codebook in enumerate(model.codebooks):
        total += codebook[codes[:, layer]]
    if model.balanced_type:
        k_last = model.k[-1]
        parents = codes[:, -1] // k_last
        local = codes[:, -1] % k_last
        positions = np.searchsorted(model.parent_ids, parents)
        assert np.array_equal(model.parent_ids[positions], parents)
        total += model.parent_centroids[model.parent_offsets[positions] + local]
    return total


def drop_parent(model: RQModel, parent: int) -> RQModel:
    """Copy of a balanced model without the stored centroids of one parent."""
    position = int(np.flatnonzero(model.parent_ids == parent)[0])
    start, stop = int(model.parent_offsets[position]), int(model.parent_offsets[position + 1])
    sizes = np.diff(model.parent_offsets)
    kept_sizes = np.delete(sizes, position)
    return dataclasses.replace(
        model,
        parent_ids=np.delete(model.parent_ids, position),
        parent_offsets=np.concatenate(([0], np.cumsum(kept_sizes))).astype(np.int64),
        parent_centroids=np.delete(model.parent_centroids, np.arange(start, stop), axis=0),
        stats={},
    )


# --- training ----------------------------------------------------------------------------


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_train_codes_shape(trained, balanced_type: int) -> None:
    _, codes, residual = trained[balanced_type]

    assert codes.shape == (ROWS, len(K))
    assert codes.dtype == np.int64
    assert residual.shape == (ROWS, DIM)
    assert residual.dtype == np.float32


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_train_upper_layers_in_range(trained, balanced_type: int) -> None:
    _, codes, _ = trained[balanced_type]

    for layer in range(2):
        assert codes[:, layer].min() >= 0
        assert codes[:, layer].max() < K[layer]


def test_train_type0_last_layer_range(trained) -> None:
    model, codes, _ = trained[0]

    assert codes[:, 2].min() >= 0
    assert codes[:, 2].max() < K[2]
    assert model.code_space(2) == 4
    assert model.parent_ids is None
    assert len(model.codebooks) == 3


def test_train_type1_global_ids(trained) -> None:
    model, codes, _ = trained[1]

    assert codes[:, 2].min() >= 0
    assert codes[:, 2].max() < 4 * 4 * 4
    assert model.code_space(2) == 64
    np.testing.assert_array_equal(codes[:, 2] // K[2], codes[:, 0] * K[1] + codes[:, 1])
    assert len(model.codebooks) == 2


def test_train_type2_global_ids(trained) -> None:
    model, codes, _ = trained[2]

    assert codes[:, 2].min() >= 0
    assert codes[:, 2].max() < 4 * 4
    assert model.code_space(2) == 16
    np.testing.assert_array_equal(codes[:, 2] // K[2], codes[:, 1])


@pytest.mark.parametrize("balanced_type", (1, 2))
def test_train_stores_only_seen_parents(trained, balanced_type: int) -> None:
    model, codes, _ = trained[balanced_type]

    np.testing.assert_array_equal(model.parent_ids, np.unique(codes[:, 2] // K[2]))
    assert model.parent_offsets.shape == (model.parent_ids.shape[0] + 1,)
    assert int(model.parent_offsets[-1]) == model.parent_centroids.shape[0]


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_train_residual_is_remainder(vectors, trained, balanced_type: int) -> None:
    model, codes, residual = trained[balanced_type]

    expected = vectors.astype(np.float64) - reconstruct(model, codes)

    np.testing.assert_allclose(residual, expected, atol=1e-5)


def test_train_normalized_residuals(vectors) -> None:
    _, _, residual = train_rq(vectors, RQSettings(k=(4, 4), normalize_residuals=True))

    np.testing.assert_allclose(np.linalg.norm(residual, axis=1), 1.0, rtol=1e-5)


def test_train_small_parent_own_centroids() -> None:
    # k_last = 16 is more than all 12 rows, so every parent keeps one centroid per point.
    points = np.random.default_rng(3).standard_normal((12, DIM)).astype(np.float32)

    model, codes, residual = train_rq(points, RQSettings(k=(2, 2, 16), balanced_type=2))

    np.testing.assert_array_equal(residual, np.zeros_like(residual))
    parents = codes[:, 2] // 16
    for parent in np.unique(parents):
        local = codes[parents == parent, 2] % 16
        assert np.unique(local).shape[0] == local.shape[0]
    assert model.parent_centroids.shape[0] == 12


def test_train_deterministic(vectors) -> None:
    _, first, _ = train_rq(vectors, RQSettings(k=K, balanced_type=1, seed=11))
    _, second, _ = train_rq(vectors, RQSettings(k=K, balanced_type=1, seed=11))

    np.testing.assert_array_equal(first, second)


def test_train_k_above_rows_raises() -> None:
    points = np.random.default_rng(3).standard_normal((10, DIM)).astype(np.float32)

    with pytest.raises(RQError) as caught:
        train_rq(points, RQSettings(k=(4, 20)))

    message = str(caught.value)
    assert "layer 2" in message
    assert "k=20" in message
    assert "10 rows" in message


def test_train_cap_k_caps_layer() -> None:
    points = np.random.default_rng(3).standard_normal((10, DIM)).astype(np.float32)

    model, codes, _ = train_rq(points, RQSettings(k=(4, 20), cap_k=True))

    assert model.codebooks[1].shape == (10, DIM)
    assert codes[:, 1].max() < 10


def test_train_no_rows_raises() -> None:
    with pytest.raises(RQError, match="no vectors"):
        train_rq(np.zeros((0, DIM), dtype=np.float32), RQSettings(k=(2, 2)))


# --- encoding and incremental training --------------------------------------------------------


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_encode_reproduces_training(vectors, trained, balanced_type: int) -> None:
    model, codes, residual = trained[balanced_type]

    encoded, encoded_residual, unseen = encode_rq(model, vectors)

    np.testing.assert_array_equal(encoded, codes)
    np.testing.assert_allclose(encoded_residual, residual, atol=1e-6)
    assert unseen == 0


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_reference_full_depth_same_codes(vectors, trained, balanced_type: int) -> None:
    model, codes, _ = trained[balanced_type]
    settings = RQSettings(k=K, balanced_type=balanced_type)

    reused, reused_codes, _ = train_rq(vectors, settings, reference=model, referlayer=len(K))

    np.testing.assert_array_equal(reused_codes, codes)
    for layer, codebook in enumerate(model.codebooks):
        assert np.array_equal(reused.codebooks[layer], codebook)


def test_encode_empty_input(trained) -> None:
    model, _, _ = trained[1]

    codes, residual, unseen = encode_rq(model, np.zeros((0, DIM), dtype=np.float32))

    assert codes.shape == (0, 3)
    assert residual.shape == (0, DIM)
    assert unseen == 0


def test_encode_wrong_dim_raises(trained) -> None:
    model, _, _ = trained[0]

    with pytest.raises(RQError, match="dimension 8"):
        encode_rq(model, np.zeros((3, 5), dtype=np.float32))


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_referlayer_one_retrains_rest(trained, balanced_type: int) -> None:
    model, _, _ = trained[balanced_type]
    new_vectors = np.random.default_rng(99).standard_normal((400, DIM)).astype(np.float32)
    settings = RQSettings(k=K, balanced_type=balanced_type)

    partial, codes, _ = train_rq(new_vectors, settings, reference=model, referlayer=1)

    assert np.array_equal(partial.codebooks[0], model.codebooks[0])
    assert not np.array_equal(partial.codebooks[1], model.codebooks[1])
    np.testing.assert_array_equal(codes[:, 0], encode_rq(model, new_vectors)[0][:, 0])


@pytest.mark.parametrize(
    ("settings", "dim", "detail"),
    [
        (RQSettings(k=(8, 4, 4)), DIM, "k=4-4-4"),
        (RQSettings(k=K), DIM + 2, "dimension 8"),
        (RQSettings(k=K, balanced_type=2), DIM, "balanced_type=0"),
        (RQSettings(k=K, normalize_residuals=True), DIM, "normalize_residuals"),
    ],
)
def test_reference_mismatch_raises(trained, settings: RQSettings, dim: int, detail: str) -> None:
    model, _, _ = trained[0]
    points = np.random.default_rng(5).standard_normal((100, dim)).astype(np.float32)

    with pytest.raises(RQError) as caught:
        train_rq(points, settings, reference=model, referlayer=1)

    assert detail in str(caught.value)
    assert "mode=full" in str(caught.value)


def test_encode_unseen_parent_counted(vectors, trained) -> None:
    model, codes, _ = trained[1]
    parents = codes[:, 2] // K[2]
    dropped = int(parents[0])
    partial = drop_parent(model, dropped)

    encoded, _, unseen = encode_rq(partial, vectors)

    assert unseen == int(np.count_nonzero(parents == dropped))
    assert unseen > 0
    # Points of the unseen parent get local code 0, and all other points keep their codes.
    np.testing.assert_array_equal(encoded[parents == dropped, 2], dropped * K[2])
    np.testing.assert_array_equal(encoded[parents != dropped], codes[parents != dropped])


def test_encode_unseen_parent_keeps_residual(vectors, trained) -> None:
    model, codes, _ = trained[2]
    parents = codes[:, 2] // K[2]
    dropped = int(parents[0])
    partial = drop_parent(model, dropped)
    members = parents == dropped

    _, residual, _ = encode_rq(partial, vectors)

    upper = model.codebooks[0][codes[members, 0]] + model.codebooks[1][codes[members, 1]]
    np.testing.assert_allclose(residual[members], vectors[members] - upper, atol=1e-5)


# --- persistence ---------------------------------------------------------------------------------


# --- extend_rq: online update of later layers -------------------------------------------------


def one_layer_model(centroids: list[list[float]]) -> RQModel:
    codebook = np.array(centroids, dtype=np.float32)
    return RQModel((codebook.shape[0],), codebook.shape[1], 0, False, [codebook])


def test_extend_weighted_mean_update() -> None:
    model = one_layer_model([[0.0, 0.0], [10.0, 10.0]])
    reference_codes = np.array([[0], [0], [0], [1]], dtype=np.int64)

    updated, codes, _, _ = extend_rq(model, np.array([[1.0, 0.0]], dtype=np.float32), 0, reference_codes)

    # Centroid 0 held 3 keys: (3 * (0, 0) + (1, 0)) / 4 = (0.25, 0).
    np.testing.assert_allclose(updated.codebooks[0][0], [0.25, 0.0])
    np.testing.assert_allclose(updated.codebooks[0][1], [10.0, 10.0])
    assert codes[:, 0].tolist() == [0]


def test_extend_empty_centroid_takes_mean() -> None:
    model = one_layer_model([[0.0, 0.0], [10.0, 10.0]])
    reference_codes = np.array([[0]], dtype=np.int64)
    points = np.array([[8.0, 8.0], [12.0, 10.0]], dtype=np.float32)

    updated, codes, residuals, _ = extend_rq(model, points, 0, reference_codes)

    np.testing.assert_allclose(updated.codebooks[0][1], [10.0, 9.0])
    assert codes[:, 0].tolist() == [1, 1]
    np.testing.assert_allclose(residuals, [[-2.0, -1.0], [2.0, 1.0]])


def test_extend_keeps_reference_unchanged(vectors, trained) -> None:
    model, codes, _ = trained[0]
    before = [codebook.copy() for codebook in model.codebooks]

    updated, _, _, _ = extend_rq(model, vectors[:50] * 1.5, 1, codes)

    for layer, codebook in enumerate(before):
        np.testing.assert_array_equal(model.codebooks[layer], codebook)
    np.testing.assert_array_equal(updated.codebooks[0], before[0])
    assert updated.stats["updated_layers"] == [2, 3]


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_extend_full_referlayer_is_encode(vectors, trained, balanced_type: int) -> None:
    model, _, _ = trained[balanced_type]

    updated, codes, residuals, _ = extend_rq(model, vectors[:40], model.depth)
    expected_codes, expected_residuals, _ = encode_rq(model, vectors[:40])

    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(residuals, expected_residuals)
    assert updated.stats["updated_layers"] == []


def test_extend_balanced_updates_upper_only(vectors, trained) -> None:
    model, codes, _ = trained[1]

    updated, new_codes, _, _ = extend_rq(model, vectors[:60], 1, codes)

    assert updated.stats["updated_layers"] == [2]
    assert updated.parent_centroids is model.parent_centroids
    assert new_codes[:, 2].max() < model.code_space(2)


def test_extend_invalid_referlayer_raises(vectors, trained) -> None:
    model, _, _ = trained[0]

    with pytest.raises(RQError, match="referlayer=4"):
        extend_rq(model, vectors[:5], 4)



@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_save_load_round_trip(tmp_path: Path, trained, balanced_type: int) -> None:
    model, _, _ = trained[balanced_type]

    model.save(tmp_path / "rq")
    loaded = RQModel.load(tmp_path / "rq")

    assert loaded.k == model.k
    assert loaded.dim == model.dim
    assert loaded.balanced_type == model.balanced_type
    assert loaded.normalize_residuals == model.normalize_residuals
    assert len(loaded.codebooks) == len(model.codebooks)
    for saved, restored in zip(model.codebooks, loaded.codebooks):
        assert np.array_equal(saved, restored)
    if balanced_type:
        assert np.array_equal(loaded.parent_ids, model.parent_ids)
        assert np.array_equal(loaded.parent_offsets, model.parent_offsets)
        assert np.array_equal(loaded.parent_centroids, model.parent_centroids)


def test_loaded_model_encodes_same(tmp_path: Path, vectors, trained) -> None:
    model, codes, _ = trained[1]
    model.save(tmp_path / "rq")

    encoded, _, _ = encode_rq(RQModel.load(tmp_path / "rq"), vectors)

    np.testing.assert_array_equal(encoded, codes)


def test_load_missing_meta_raises(tmp_path: Path, trained) -> None:
    model, _, _ = trained[0]
    model.save(tmp_path / "rq")
    (tmp_path / "rq" / MODEL_META_FILE).unlink()

    with pytest.raises(StorageError, match=MODEL_META_FILE):
        RQModel.load(tmp_path / "rq")


def test_load_missing_codebook_raises(tmp_path: Path, trained) -> None:
    model, _, _ = trained[0]
    model.save(tmp_path / "rq")
    (tmp_path / "rq" / "rq_codebook_2.npy").unlink()

    with pytest.raises(StorageError, match="rq_codebook_2.npy"):
        RQModel.load(tmp_path / "rq")


def test_load_missing_last_centroids_raises(tmp_path: Path, trained) -> None:
    model, _, _ = trained[1]
    model.save(tmp_path / "rq")
    (tmp_path / "rq" / "rq_last_centroids.npy").unlink()

    with pytest.raises(StorageError, match="rq_last_centroids.npy"):
        RQModel.load(tmp_path / "rq")


@pytest.mark.parametrize("file_name", ["rq_last_parent_ids.npy", "rq_last_parent_offsets.npy"])
def test_load_missing_parent_arrays_raises(tmp_path: Path, trained, file_name: str) -> None:
    model, _, _ = trained[1]
    model.save(tmp_path / "rq")
    (tmp_path / "rq" / file_name).unlink()

    with pytest.raises(StorageError, match=file_name):
        RQModel.load(tmp_path / "rq")


def test_load_corrupt_meta_raises(tmp_path: Path, trained) -> None:
    model, _, _ = trained[0]
    model.save(tmp_path / "rq")
    (tmp_path / "rq" / MODEL_META_FILE).write_text("{not json", encoding="utf-8")

    with pytest.raises(StorageError, match="corrupt"):
        RQModel.load(tmp_path / "rq")


def test_load_meta_without_k_raises(tmp_path: Path, trained) -> None:
    model, _, _ = trained[0]
    model.save(tmp_path / "rq")
    meta_path = tmp_path / "rq" / MODEL_META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    del meta["k"]
    meta_path.write_text(json.dumps(meta), encoding="utf-8")

    with pytest.raises(StorageError, match="corrupt"):
        RQModel.load(tmp_path / "rq")


def test_load_codebook_wrong_shape_raises(tmp_path: Path, trained) -> None:
    model, _, _ = trained[0]
    model.save(tmp_path / "rq")
    np.save(tmp_path / "rq" / "rq_codebook_1.npy", np.zeros((4, DIM + 1), dtype=np.float32))

    with pytest.raises(StorageError, match="shape"):
        RQModel.load(tmp_path / "rq")


# --- cluster statistics ---------------------------------------------------------------------------


def test_cluster_statistics_hand_example() -> None:
    model = RQModel(k=(3, 4), dim=2, balanced_type=0, normalize_residuals=False, codebooks=[np.zeros((3, 2)), np.zeros((4, 2))])
    codes = np.array([[0, 1], [0, 1], [0, 2], [2, 3], [2, 1]], dtype=np.int64)

    stats = cluster_statistics(codes, model)
    first, second = stats["layers"]

    assert stats["points"] == 5
    # Layer 1: code 0 has 3 points, code 2 has 2.
    assert first == {"layer": 1, "code_space": 3, "used_codes": 2, "min_size": 2, "median_size": 2.5, "p99_size": pytest.approx(2.99), "max_size": 3}
    # Layer 2: code 1 has 3 points, codes 2 and 3 one each.
    assert second["used_codes"] == 3
    assert second["code_space"] == 4
    assert second["min_size"] == 1
    assert second["median_size"] == 1.0
    assert second["max_size"] == 3


@pytest.mark.parametrize("balanced_type", BALANCED_TYPES)
def test_cluster_statistics_trained(trained, balanced_type: int) -> None:
    model, codes, _ = trained[balanced_type]

    stats = cluster_statistics(codes, model)

    assert stats["points"] == ROWS
    for layer, entry in enumerate(stats["layers"]):
        sizes = np.unique(codes[:, layer], return_counts=True)[1]
        assert entry["used_codes"] == sizes.shape[0]
        assert entry["code_space"] == model.code_space(layer)
        assert entry["used_codes"] <= entry["code_space"]
        assert int(sizes.sum()) == ROWS
        assert entry["max_size"] == int(sizes.max())
        assert entry["min_size"] == int(sizes.min())


def test_cluster_statistics_empty() -> None:
    model = RQModel(k=(2,), dim=2, balanced_type=0, normalize_residuals=False, codebooks=[np.zeros((2, 2))])

    stats = cluster_statistics(np.zeros((0, 1), dtype=np.int64), model)

    assert stats["points"] == 0
    assert stats["layers"][0]["used_codes"] == 0
    assert stats["layers"][0]["max_size"] == 0
