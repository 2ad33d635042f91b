"""SID formatting and quality metrics.

Definitions (n keys, codes of shape (n, depth) for RQ, k_l clusters at layer l):

- CUR (code utilization rate) of a layer: distinct codes used / that layer's code space.
- CUR of a prefix of length l: distinct prefixes / (k_1 * ... * k_l).
- CUR of the full SID: distinct full SIDs / (k_1 * k_2 * ... * k_depth), as in the
  OneSearch papers; OPQ codes make it possible to exceed 1.
- ICR (independent coding rate): share of keys whose SID no other key has.
- Largest collision group: most keys sharing one SID.
- Churn: share of unchanged keys (same text and embedding as in the reference) whose SID
  differs from the reference.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

LAYER_LETTERS = string.ascii_lowercase


def sid_letters(depth: int) -> tuple[list[str], str]:
    """Letters of the RQ layers and the letter used by all OPQ positions."""
    if depth + 1 > len(LAYER_LETTERS):
        raise ValueError(f"RQ depth {depth} needs more than {len(LAYER_LETTERS) - 1} layer letters")
    return list(LAYER_LETTERS[:depth]), LAYER_LETTERS[depth]


def format_sids(rq_codes: np.ndarray, opq_codes: np.ndarray, opq_bits: int) -> list[str]:
    """Render SIDs like <a_12><b_7><c_301><d_5><d_290>.

    OPQ position j (0-based) is offset by j * 2**opq_bits, so the positions never share a
    token: with 8 bits the second OPQ code q is written <d_{q+256}>. The strings are built
    with Arrow's string kernels, about three times faster than pandas string addition.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if rq_codes.shape[0] != opq_codes.shape[0]:
        raise ValueError(f"{rq_codes.shape[0]} RQ rows but {opq_codes.shape[0]} OPQ rows")
    layer_letters, opq_letter = sid_letters(rq_codes.shape[1])
    if rq_codes.shape[0] == 0 or rq_codes.shape[1] + opq_codes.shape[1] == 0:
        return []
    parts: list[Any] = []
    for layer, letter in enumerate(layer_letters):
        parts += [f"<{letter}_", pa.array(rq_codes[:, layer]).cast(pa.string()), ">"]
    for position in range(opq_codes.shape[1]):
        offset = position * (1 << opq_bits)
        parts += [f"<{opq_letter}_", pa.array(opq_codes[:, position] + offset).cast(pa.string()), ">"]
    return pc.binary_join_element_wise(*parts, "").to_pylist()


# Above this code value, counting distinct codes sorts instead of using a bincount table.
BINCOUNT_MAX_CODE = 1 << 24


def _row_ids(codes: np.ndarray) -> np.ndarray:
    """Return one id per row of non-negative integer codes (n, L); equal rows get equal ids.

    Mixed-radix packing turns each row into one int64, which sorts far faster than rows.
    When the radices do not fit in 63 bits, the ids come from np.unique over rows.
    """
    radices = [int(value) + 1 for value in codes.max(axis=0)]
    if math.prod(radices) >= 2**63:
        return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    packed = np.zeros(codes.shape[0], dtype=np.int64)
    for column, radix in enumerate(radices):
        packed *= radix
        packed += codes[:, column]
    return packed


def _distinct_rows(codes: np.ndarray) -> int:
    """Count distinct rows of non-negative integer codes (n, L)."""
    if codes.shape[0] == 0:
        return 0
    return int(np.unique(_row_ids(codes)).shape[0])


def _distinct_values(values: np.ndarray) -> int:
    if values.shape[0] == 0:
        return 0
    if int(values.max()) < BINCOUNT_MAX_CODE:
        return int(np.count_nonzero(np.bincount(values)))
    return int(np.unique(values).shape[0])


def code_uniqueness(codes: np.ndarray) -> dict:
    """Compute uniqueness() from the code rows (n, positions) that the SIDs are written from."""
    total = codes.shape[0]
    if total == 0:
        return {"keys": 0, "distinct_sids": 0, "icr": 0.0, "largest_collision_group": 0}
    _, inverse, counts = np.unique(_row_ids(codes), return_inverse=True, return_counts=True)
    return {
        "keys": total,
        "distinct_sids": int(counts.shape[0]),
        "icr": int(np.count_nonzero(counts[inverse] == 1)) / total,
        "largest_collision_group": int(counts.max()),
    }


def coverage(rq_codes: np.ndarray, code_spaces: Sequence[int], k: Sequence[int]) -> dict:
    """CUR per layer (over code_spaces) and per prefix (over products of k)."""
    per_layer = []
    per_prefix = []
    for layer in range(rq_codes.shape[1]):
        used = _distinct_values(rq_codes[:, layer])
        per_layer.append({"layer": layer + 1, "used": used, "space": int(code_spaces[layer]), "cur": used / code_spaces[layer]})
        distinct = _distinct_rows(rq_codes[:, : layer + 1])
        space = math.prod(k[: layer + 1])
        per_prefix.append({"length": layer + 1, "distinct": distinct, "space": space, "cur": distinct / space})
    return {"per_layer": per_layer, "per_prefix": per_prefix}


def uniqueness(sids: Sequence[str]) -> dict:
    """ICR, distinct SIDs and the largest collision group of a list of SIDs."""
    total = len(sids)
    if total == 0:
        return {"keys": 0, "distinct_sids": 0, "icr": 0.0, "largest_collision_group": 0}
    counts = pd.Series(sids).value_counts(sort=False).to_numpy()
    singletons = int(np.count_nonzero(counts == 1))
    return {
        "keys": total,
        "distinct_sids": int(counts.shape[0]),
        "icr": singletons / total,
        "largest_collision_group": int(counts.max()),
    }


def churn(reference_sids: Sequence[str], current_sids: Sequence[str]) -> dict:
    """Share of keys (aligned lists of unchanged keys) whose SID changed."""
    if len(reference_sids) != len(current_sids):
        raise ValueError(f"churn needs aligned lists, got {len(reference_sids)} and {len(current_sids)}")
    compared = len(reference_sids)
    changed = int(np.count_nonzero(np.asarray(reference_sids, dtype=object) != np.asarray(current_sids, dtype=object))) if compared else 0
    return {"unchanged_keys": compared, "sid_changed": changed, "churn": changed / compared if compared else 0.0}
