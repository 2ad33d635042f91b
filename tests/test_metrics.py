"""Tests for SID formatting and the coverage, uniqueness and churn metrics."""

from __future__ import annotations

import numpy as np
import pytest

from onesearch_tasks.sid import metrics as sid_metrics
from onesearch_tasks.sid.metrics import churn, coverage, format_sids, sid_letters, uniqueness

# --- format_sids ----------------------------------------------------------------------------


def test_format_three_layers() -> None:
    rq_codes = np.array([[1, 2, 3], [0, 0, 63]], dtype=np.int64)
    opq_codes = np.array([[5, 7], [255, 0]], dtype=np.int64)

    sids = format_sids(rq_codes, opq_codes, opq_bits=8)

    assert sids == [
        "<a_1><b_2><c_3><d_5><d_263>",
        "<a_0><b_0><c_63><d_255><d_256>",
    ]


def test_format_two_layers_opq_letter_c() -> None:
    sids = format_sids(np.array([[4, 9]]), np.array([[1, 2]]), opq_bits=8)

    assert sids == ["<a_4><b_9><c_1><c_258>"]


def test_format_bits4_offset_16() -> None:
    sids = format_sids(np.array([[1, 2, 3]]), np.array([[5, 15, 0]]), opq_bits=4)

    # Positions 0, 1 and 2 are offset by 0, 16 and 32.
    assert sids == ["<a_1><b_2><c_3><d_5><d_31><d_32>"]


def test_format_without_opq() -> None:
    sids = format_sids(np.array([[1, 2]]), np.zeros((1, 0), dtype=np.int64), opq_bits=8)

    assert sids == ["<a_1><b_2>"]


def test_format_empty() -> None:
    sids = format_sids(np.zeros((0, 3), dtype=np.int64), np.zeros((0, 2), dtype=np.int64), opq_bits=8)

    assert sids == []


def test_format_row_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 RQ rows but 1 OPQ rows"):
        format_sids(np.zeros((2, 3), dtype=np.int64), np.zeros((1, 2), dtype=np.int64), opq_bits=8)


def test_sid_letters() -> None:
    assert sid_letters(3) == (["a", "b", "c"], "d")


def test_sid_letters_too_deep_raises() -> None:
    with pytest.raises(ValueError, match="depth 26"):
        sid_letters(26)


# --- coverage ---------------------------------------------------------------------------------


@pytest.fixture
def small_codes() -> np.ndarray:
    # k = (2, 3) and five keys. Layer 1 uses codes {0, 1} and layer 2 uses {0, 1}.
    # The distinct prefixes of length 2 are (0,0), (0,1) and (1,1).
    return np.array([[0, 0], [0, 1], [1, 1], [1, 1], [0, 0]], dtype=np.int64)


def test_coverage_per_layer(small_codes: np.ndarray) -> None:
    result = coverage(small_codes, code_spaces=(2, 3), k=(2, 3))
    first, second = result["per_layer"]

    assert first == {"layer": 1, "used": 2, "space": 2, "cur": 1.0}
    assert second == {"layer": 2, "used": 2, "space": 3, "cur": pytest.approx(2 / 3)}


def test_coverage_per_prefix(small_codes: np.ndarray) -> None:
    result = coverage(small_codes, code_spaces=(2, 3), k=(2, 3))
    first, second = result["per_prefix"]

    assert first == {"length": 1, "distinct": 2, "space": 2, "cur": 1.0}
    assert second == {"length": 2, "distinct": 3, "space": 6, "cur": 0.5}


def test_coverage_balanced_code_space() -> None:
    # Balanced last layer: global ids over a code space of 4 * 4 * 4 = 64, prefix space 2 * 4 * 4 = 32.
    codes = np.array([[0, 1, 5], [1, 3, 60], [1, 3, 61], [1, 3, 61]], dtype=np.int64)

    result = coverage(codes, code_spaces=(2, 4, 64), k=(2, 4, 4))

    assert result["per_layer"][2] == {"layer": 3, "used": 3, "space": 64, "cur": 3 / 64}
    assert result["per_prefix"][2] == {"length": 3, "distinct": 3, "space": 32, "cur": 3 / 32}


def test_coverage_empty() -> None:
    result = coverage(np.zeros((0, 2), dtype=np.int64), code_spaces=(2, 3), k=(2, 3))

    assert [entry["cur"] for entry in result["per_layer"]] == [0.0, 0.0]
    assert [entry["distinct"] for entry in result["per_prefix"]] == [0, 0]


# --- uniqueness -------------------------------------------------------------------------------


def test_uniqueness_hand_example() -> None:
    # "x" is shared by 3 keys while "y" and "z" are unique, so ICR = 2 / 5.
    result = uniqueness(["x", "y", "x", "z", "x"])

    assert result["keys"] == 5
    assert result["distinct_sids"] == 3
    assert result["icr"] == pytest.approx(0.4)
    assert result["largest_collision_group"] == 3


def test_uniqueness_all_unique() -> None:
    result = uniqueness(["a", "b", "c"])

    assert result["icr"] == 1.0
    assert result["largest_collision_group"] == 1


def test_uniqueness_all_same() -> None:
    result = uniqueness(["a", "a"])

    assert result["icr"] == 0.0
    assert result["largest_collision_group"] == 2


def test_uniqueness_empty() -> None:
    assert uniqueness([]) == {"keys": 0, "distinct_sids": 0, "icr": 0.0, "largest_collision_group": 0}


# --- churn -------------------------------------------------------------------------------------


def test_churn_hand_example() -> None:
    # Keys 2 and 4 of 4 changed their SID: churn 0.5.
    result = churn(["s1", "s2", "s3", "s4"], ["s1", "t2", "s3", "t4"])

    assert result == {"unchanged_keys": 4, "sid_changed": 2, "churn": 0.5}


def test_churn_none_changed() -> None:
    result = churn(["s1", "s2", "s3"], ["s1", "s2", "s3"])

    assert result["churn"] == 0.0


def test_churn_empty() -> None:
    assert churn([], []) == {"unchanged_keys": 0, "sid_changed": 0, "churn": 0.0}


def test_churn_unaligned_raises() -> None:
    with pytest.raises(ValueError, match="got 2 and 1"):
        churn(["a", "b"], ["a"])


@pytest.mark.parametrize("scale", [1, 1 << 40])
def test_code_uniqueness_matches_strings(scale: int) -> None:
    # scale 2**40 makes the radices overflow 63 bits, so the row-wise fallback runs.
    rng = np.random.default_rng(4)
    rq_codes = rng.integers(0, 3, size=(200, 3)) * scale
    opq_codes = rng.integers(0, 2, size=(200, 2))

    from_codes = sid_metrics.code_uniqueness(np.concatenate([rq_codes, opq_codes], axis=1))
    from_strings = sid_metrics.uniqueness(sid_metrics.format_sids(rq_codes, opq_codes, 1))

    assert from_codes == from_strings


def test_coverage_large_codes_counted() -> None:
    codes = np.array([[0, 1 << 30], [1, 1 << 30], [1, 5]], dtype=np.int64)

    coverage = sid_metrics.coverage(codes, [2, 1 << 31], [2, 1 << 31])

    assert [layer["used"] for layer in coverage["per_layer"]] == [2, 2]
    assert [prefix["distinct"] for prefix in coverage["per_prefix"]] == [2, 3]
