"""Benchmark the SID refresh steps on generated data at production scale.

Generates a seeded Zipf-like mixture of L2-normalized vectors (queries and items), a
keyword dictionary file and key texts, then times the project's own step functions:
load, keyword enhancement, RQ per layer, OPQ train, OPQ encode, write and metrics.
Scenarios, each in a fresh child process so that its peak RSS is its own:

- full: a full refresh with the requested balanced type; writes the reference state.
- baseline: plain faiss k-means on all rows (no subsampling, 25 iterations, the same seed)
  for every layer, then the same OPQ, for the ICR comparison.
- balanced: a full refresh with a balanced last layer of type 1, for the time and memory
  comparison with the standard last layer.
- incremental: one run per --new-fraction on top of the full run's state, with the
  online update of the layers after --referlayer.

The k-means floor is layers x 25 iterations x 2*N*k*d FLOP divided by the float32
matrix-multiply rate measured at the start of the same run. The script prints a table
and, with --json, writes every number to a file. It is a measurement, not a test: it
exits 0 unless a step fails or --check is given and a target is missed.

    .venv/bin/python benchmarks/sid_refresh.py --json var/bench/sid_refresh.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger("benchmarks.sid_refresh")

FLOOR_ITERATIONS = 25
MATMUL_BLOCK_ROWS = 4_096
MATMUL_SECONDS = 1.0
MATMUL_REPEATS = 3
MIXTURE_KEYS_PER_COMPONENT = 100
ZIPF_EXPONENT = 1.1
TERM_ZIPF_EXPONENT = 1.3
CJK_FIRST, CJK_COUNT = 0x4E00, 2_500
LATIN_TERM_SHARE = 0.05
FILLER = ("的", " ", "款", "新")
QUERY_TERMS = (1, 3)
ITEM_TERMS = (3, 7)
RAW_WEIGHT = 0.5

# Targets, stated as in the benchmark page of the docs.
FULL_FLOOR_FACTOR, FULL_FLOOR_SLACK_SECONDS = 1.1, 15.0
INCREMENTAL_TARGET_FRACTION, INCREMENTAL_MAX_SHARE = 0.01, 0.10
BALANCED_MAX_RQ_FACTOR, BALANCED_MAX_RSS_MB = 2.0, 4_096.0
KEYWORD_MIN_KEYS_PER_SECOND = 200_000
OPQ_ENCODE_MAX_SECONDS_PER_MILLION = 2.0


# --- measurement helpers -------------------------------------------------------------------------


@contextmanager
def timed(record: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall-clock seconds of the block to record[f"{name}_seconds"]."""
    started = time.perf_counter()
    yield
    record[f"{name}_seconds"] = record.get(f"{name}_seconds", 0.0) + time.perf_counter() - started


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_matmul_gflops(dim: int, k: int) -> float:
    """Measure the best float32 GFLOP/s of (4096, dim) x (dim, k) products, a k-means assignment block."""
    rng = np.random.default_rng(0)
    left = rng.standard_normal((MATMUL_BLOCK_ROWS, dim), dtype=np.float32)
    right = rng.standard_normal((dim, k), dtype=np.float32)
    out = np.empty((MATMUL_BLOCK_ROWS, k), dtype=np.float32)
    flop = 2.0 * MATMUL_BLOCK_ROWS * dim * k
    best = 0.0
    for _ in range(MATMUL_REPEATS):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < MATMUL_SECONDS:
            np.matmul(left, right, out=out)
            calls += 1
        best = max(best, calls * flop / (time.perf_counter() - started) / 1e9)
    return best


def kmeans_floor_seconds(keys: int, dim: int, k: tuple[int, ...], gflops: float) -> float:
    """Return the seconds that FLOOR_ITERATIONS full-data assignment passes per layer need at gflops."""
    flop = sum(FLOOR_ITERATIONS * 2.0 * keys * layer_k * dim for layer_k in k)
    return flop / (gflops * 1e9)


# --- generated data ------------------------------------------------------------------------------


def _mixture(rng: np.random.Generator, rows: int, centers: np.ndarray, weights: np.ndarray, spreads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw rows from the mixture. Returns (component of each row, unit vectors (rows, d) float32)."""
    components = rng.choice(centers.shape[0], size=rows, p=weights)
    vectors = centers[components] + rng.standard_normal((rows, centers.shape[1]), dtype=np.float32) * spreads[components, None]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return components, vectors


def _terms(rng: np.random.Generator, count: int) -> list[str]:
    """Draw distinct dictionary terms: 2-4 CJK characters, and a few upper-case Latin words."""
    chars = np.array([chr(CJK_FIRST + offset) for offset in range(CJK_COUNT)])
    latin = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    terms: dict[str, None] = {}
    while len(terms) < count:
        for _ in range(count - len(terms)):
            if rng.random() < LATIN_TERM_SHARE:
                terms["".join(rng.choice(latin, rng.integers(3, 7)))] = None
            else:
                terms["".join(rng.choice(chars, rng.integers(2, 5)))] = None
    return list(terms)


def _texts(rng: np.random.Generator, components: np.ndarray, term_offsets: np.ndarray, terms: list[str], term_range: tuple[int, int]) -> list[str]:
    """Build texts of 1..n terms near each component's term offset, with filler between them."""
    rows = components.shape[0]
    counts = rng.integers(term_range[0], term_range[1] + 1, size=rows)
    ranks = np.minimum(rng.zipf(TERM_ZIPF_EXPONENT, size=int(counts.sum())), len(terms)) - 1
    term_ids = (np.repeat(term_offsets[components], counts) + ranks) % len(terms)
    fillers = rng.integers(0, len(FILLER), size=rows)
    texts, position = [], 0
    for row, count in enumerate(counts.tolist()):
        texts.append(FILLER[fillers[row]].join(terms[term] for term in term_ids[position : position + count]))
        position += count
    return texts


class Generator:
    """Seeded generator of one catalog and the new keys of later days."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        rng = np.random.default_rng(args.seed)
        components = max(16, args.keys // MIXTURE_KEYS_PER_COMPONENT)
        self.centers = rng.standard_normal((components, args.dim), dtype=np.float32)
        weights = 1.0 / np.arange(1, components + 1) ** ZIPF_EXPONENT
        self.weights = weights / weights.sum()
        self.spreads = rng.uniform(0.3, 0.9, size=components).astype(np.float32)
        self.terms = _terms(rng, args.dict_terms)
        self.term_offsets = rng.integers(0, len(self.terms), size=components)
        self.term_vectors = rng.standard_normal((len(self.terms), args.dim), dtype=np.float32)
        self.term_vectors /= np.linalg.norm(self.term_vectors, axis=1, keepdims=True)

    def write_dictionary(self, path: Path) -> None:
        """Write the `keyword \\t type \\t pv \\t emb` file, 6 significant digits per value."""
        import io

        buffer = io.StringIO()
        np.savetxt(buffer, self.term_vectors, fmt="%.6g", delimiter="\x02")
        embeddings = buffer.getvalue().splitlines()
        with path.open("w", encoding="utf-8") as handle:
            for rank, (term, embedding) in enumerate(zip(self.terms, embeddings)):
                handle.write(f"{term}\tentity\t{len(self.terms) - rank}\t{embedding}\n")

    def keys(self, rows: int, seed: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
        """Return keys (columns entity, key, text) and raw vectors (rows, d) float32."""
        rng = np.random.default_rng(seed)
        components, vectors = _mixture(rng, rows, self.centers, self.weights, self.spreads)
        queries = int(round(rows * self.args.query_share))
        texts = _texts(rng, components[:queries], self.term_offsets, self.terms, QUERY_TERMS)
        texts += _texts(rng, components[queries:], self.term_offsets, self.terms, ITEM_TERMS)
        keys = pd.DataFrame({
            "entity": ["queries"] * queries + ["items"] * (rows - queries),
            "key": [f"{prefix}{row}" for row in range(rows)],
            "text": texts,
        })
        return keys, vectors


def prepare_data(args: argparse.Namespace, folder: Path) -> None:
    """Write the catalog, the dictionary and the new keys of every --new-fraction."""
    generator = Generator(args)
    generator.write_dictionary(folder / "dictionary.tsv")
    keys, vectors = generator.keys(args.keys, args.seed + 1, "k")
    keys.to_parquet(folder / "keys.parquet", index=False)
    np.save(folder / "vectors.npy", vectors)
    for number, fraction in enumerate(args.new_fractions):
        new_keys, new_vectors = generator.keys(max(1, int(round(args.keys * fraction))), args.seed + 100 + number, f"n{number}_")
        new_keys.to_parquet(folder / f"new_{number}_keys.parquet", index=False)
        np.save(folder / f"new_{number}_vectors.npy", new_vectors)


# --- scenarios (each runs in a child process) -------------------------------------------------------


def _import_heavy_modules() -> None:
    """Import what the steps import lazily, so that no step's time includes an import."""
    import ahocorasick  # noqa: F401
    import faiss  # noqa: F401
    import pyarrow.parquet  # noqa: F401


def _enhance(folder: Path, texts: list[str], raw: np.ndarray, record: dict[str, float]) -> np.ndarray:
    from onesearch_tasks.config import KeywordConfig
    from onesearch_tasks.sid.embedders import HashingNgramEmbedder
    from onesearch_tasks.sid.keywords import KeywordMatcher, fuse_matches, read_dictionary_file_cached

    with timed(record, "keywords"):
        dictionary, rejected = read_dictionary_file_cached(folder / "dictionary.tsv", HashingNgramEmbedder(raw.shape[1]), folder / "cache")
        matcher = KeywordMatcher(dictionary.keywords)
        rows, indices = matcher.match_arrays(texts, KeywordConfig().effective_match_processes)
        fused = fuse_matches(raw, rows, indices, dictionary.vectors, RAW_WEIGHT, in_place=True)
    if rejected:
        raise RuntimeError(f"the generated dictionary has {len(rejected)} rejected lines, first: {rejected[0]}")
    record["keyword_matches"] = int(rows.size)
    record["keys_with_match_share"] = float(np.unique(rows).size / max(1, len(texts)))
    return fused


def _write_state(target: Path, keys: pd.DataFrame, model: Any, index: Any, arrays: dict[str, np.ndarray], sids: list[str]) -> None:
    from onesearch_tasks.sid.opq import save_opq
    from onesearch_tasks.storage import save_npy_atomic, write_parquet_atomic

    model.save(target / "model")
    save_opq(index, target / "model")
    for name, array in arrays.items():
        save_npy_atomic(target / f"{name}.npy", array)
    write_parquet_atomic(target / "sids.parquet", keys[["entity", "key"]].assign(sid=sids))


def _sid_metrics(rq_codes: np.ndarray, opq_codes: np.ndarray, model: Any) -> dict[str, Any]:
    """Compute ICR and collisions of the full SIDs (from their codes) and CUR of the RQ layers."""
    from onesearch_tasks.sid import metrics as sid_metrics

    spaces = [model.code_space(layer) for layer in range(model.depth)]
    return {
        "uniqueness": sid_metrics.code_uniqueness(np.concatenate([rq_codes, opq_codes], axis=1)),
        "coverage": sid_metrics.coverage(rq_codes, spaces, model.k),
    }


def scenario_full(folder: str, args: argparse.Namespace, balanced_type: int, target_name: str) -> dict[str, Any]:
    """Run a full refresh: every step from the files to the written state and its metrics."""
    from onesearch_tasks.sid import metrics as sid_metrics
    from onesearch_tasks.sid.opq import encode_opq, train_opq
    from onesearch_tasks.sid.rq import RQSettings, train_rq

    _import_heavy_modules()
    root, record = Path(folder), {}
    with timed(record, "load"):
        keys = pd.read_parquet(root / "keys.parquet")
        raw = np.load(root / "vectors.npy")
    fused = _enhance(root, keys["text"].tolist(), raw, record)
    del raw

    settings = RQSettings(k=args.k, balanced_type=balanced_type, niter=args.niter, seed=args.seed, max_points_per_centroid=args.max_points_per_centroid)
    with timed(record, "rq"):
        model, codes, residuals = train_rq(fused, settings)
    for layer, seconds in enumerate(model.layer_seconds, start=1):
        record[f"rq_layer_{layer}_seconds"] = seconds
    with timed(record, "opq_train"):
        index = train_opq(residuals, args.opq_m, args.opq_bits, args.seed, args.opq_max_train_rows)
    with timed(record, "opq_encode"):
        opq_codes = encode_opq(index, residuals)

    with timed(record, "write"):
        sids = sid_metrics.format_sids(codes, opq_codes, args.opq_bits)
        arrays = {"rq_codes": codes, "residuals": residuals, "embeddings": fused, "opq_codes": opq_codes}
        _write_state(root / target_name, keys, model, index, arrays, sids)
    with timed(record, "metrics"):
        measured = _sid_metrics(codes, opq_codes, model)
    record["icr"] = measured["uniqueness"]["icr"]
    record["rq_icr"] = _code_icr(codes)
    record["largest_collision_group"] = measured["uniqueness"]["largest_collision_group"]
    record["stored_last_layer_centroids"] = int(model.parent_centroids.shape[0]) if model.balanced_type else int(model.codebooks[-1].shape[0])
    return _finish(record)


def scenario_baseline(folder: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run plain faiss k-means on every row of every layer, then the project's OPQ, on the full run's vectors."""
    import faiss

    from onesearch_tasks.sid import metrics as sid_metrics
    from onesearch_tasks.sid.opq import encode_opq, train_opq

    _import_heavy_modules()
    root, record = Path(folder), {}
    residual = np.load(root / "reference" / "embeddings.npy")
    rows, dim = residual.shape
    codes = np.empty((rows, len(args.k)), dtype=np.int64)
    with timed(record, "rq"):
        for layer, k in enumerate(args.k):
            clustering = faiss.Kmeans(dim, k, niter=FLOOR_ITERATIONS, seed=args.seed, max_points_per_centroid=rows // k + 1, verbose=False)
            clustering.train(residual)
            _, nearest = clustering.index.search(residual, 1)
            codes[:, layer] = nearest[:, 0]
            residual -= clustering.centroids[codes[:, layer]]
    with timed(record, "opq"):
        index = train_opq(residual, args.opq_m, args.opq_bits, args.seed, args.opq_max_train_rows)
        opq_codes = encode_opq(index, residual)
    record["icr"] = sid_metrics.uniqueness(sid_metrics.format_sids(codes, opq_codes, args.opq_bits))["icr"]
    record["rq_icr"] = _code_icr(codes)
    return _finish(record)


def scenario_incremental(folder: str, args: argparse.Namespace, number: int) -> dict[str, Any]:
    """Run an incremental refresh: reuse the full run's state and encode only the new keys."""
    from onesearch_tasks.sid import metrics as sid_metrics
    from onesearch_tasks.sid.opq import encode_opq, load_opq
    from onesearch_tasks.sid.rq import RQModel, extend_rq

    _import_heavy_modules()
    root, record = Path(folder), {}
    reference = root / "reference"
    with timed(record, "load"):
        new_keys = pd.read_parquet(root / f"new_{number}_keys.parquet")
        raw = np.load(root / f"new_{number}_vectors.npy")
        reference_model = RQModel.load(reference / "model")
        index = load_opq(reference / "model", expected_dim=raw.shape[1])
        reference_keys = pd.read_parquet(reference / "sids.parquet", columns=["entity", "key"])
        state = {name: np.load(reference / f"{name}.npy", mmap_mode="r") for name in ("rq_codes", "residuals", "embeddings", "opq_codes")}
    fused = _enhance(root, new_keys["text"].tolist(), raw, record)

    with timed(record, "rq"):
        model, codes, residuals, _ = extend_rq(reference_model, fused, args.referlayer, state["rq_codes"])
    with timed(record, "opq_encode"):
        opq_codes = encode_opq(index, residuals)

    with timed(record, "write"):
        arrays = {
            "rq_codes": np.concatenate([state["rq_codes"], codes]),
            "residuals": np.concatenate([state["residuals"], residuals]),
            "embeddings": np.concatenate([state["embeddings"], fused]),
            "opq_codes": np.concatenate([state["opq_codes"], opq_codes]),
        }
        sids = sid_metrics.format_sids(arrays["rq_codes"], arrays["opq_codes"], args.opq_bits)
        keys = pd.concat([reference_keys, new_keys[["entity", "key"]]], ignore_index=True)
        _write_state(root / f"incremental_{number}", keys, model, index, arrays, sids)
    with timed(record, "metrics"):
        measured = _sid_metrics(arrays["rq_codes"], arrays["opq_codes"], model)
        reused = len(reference_keys)
        changed = np.any(arrays["rq_codes"][:reused] != state["rq_codes"], axis=1) | np.any(arrays["opq_codes"][:reused] != state["opq_codes"], axis=1)
        record["churn"] = float(np.count_nonzero(changed) / reused)
    record["new_keys"] = len(new_keys)
    record["icr"] = measured["uniqueness"]["icr"]
    return _finish(record)


def _code_icr(codes: np.ndarray) -> float:
    """Return the ICR of the RQ codes alone (share of rows that no other row shares)."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float(np.count_nonzero(counts[inverse.ravel()] == 1) / codes.shape[0])


def _finish(record: dict[str, Any]) -> dict[str, Any]:
    steps = [name for name in record if name.endswith("_seconds") and not name.startswith("rq_layer_")]
    record["total_seconds"] = sum(record[name] for name in steps)
    record["peak_rss_mb"] = peak_rss_mb()
    return record


def run_child(function: Callable[..., dict[str, Any]], *arguments: Any) -> dict[str, Any]:
    """Run one scenario in a fresh spawned process and return its record."""
    # Unlike Pool workers, executor workers are not daemonic, so the keyword matcher can fork.
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(function, *arguments).result()


# --- report -------------------------------------------------------------------------------------


def evaluate_targets(result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Compare the measured numbers with the targets. Each entry: name, value, limit, passed."""
    targets = []

    def add(name: str, value: float, limit: float, passed: bool) -> None:
        targets.append({"name": name, "value": value, "limit": limit, "passed": bool(passed)})

    full_limit = FULL_FLOOR_FACTOR * result["floor_seconds"] + FULL_FLOOR_SLACK_SECONDS
    add("full refresh seconds <= 1.1 x floor + 15 s", result["total_seconds"], full_limit, result["total_seconds"] <= full_limit)
    if "baseline" in result:
        add("full ICR >= plain faiss ICR", result["icr"], result["baseline"]["icr"], result["icr"] >= result["baseline"]["icr"])
    for run in result.get("incremental", []):
        if math.isclose(run["new_fraction"], INCREMENTAL_TARGET_FRACTION):
            limit = INCREMENTAL_MAX_SHARE * result["total_seconds"]
            add("incremental (1% new) seconds <= 10% of full", run["total_seconds"], limit, run["total_seconds"] <= limit)
    if "balanced" in result:
        limit = BALANCED_MAX_RQ_FACTOR * result["rq_seconds"]
        kind = f"balanced type {args.compare_balanced}"
        add(f"{kind} RQ seconds <= 2 x standard RQ", result["balanced"]["rq_seconds"], limit, result["balanced"]["rq_seconds"] <= limit)
        add(f"{kind} peak RSS MiB < 4096", result["balanced"]["peak_rss_mb"], BALANCED_MAX_RSS_MB, result["balanced"]["peak_rss_mb"] < BALANCED_MAX_RSS_MB)
    add("keyword enhancement keys/s >= 200k", result["keywords_keys_per_second"], KEYWORD_MIN_KEYS_PER_SECOND, result["keywords_keys_per_second"] >= KEYWORD_MIN_KEYS_PER_SECOND)
    opq_limit = OPQ_ENCODE_MAX_SECONDS_PER_MILLION * args.keys / 1e6
    add("OPQ encode seconds < 2 s per 1M keys", result["opq_encode_seconds"], opq_limit, result["opq_encode_seconds"] < opq_limit)
    return targets


def print_report(result: dict[str, Any]) -> None:
    config = result["config"]
    print(f"\nSID refresh benchmark: {config['keys']:,} keys x {config['dim']} dims, k={'-'.join(map(str, config['k']))}, "
          f"OPQ {config['opq_m']}x{config['opq_bits']}, {result['machine']['cpus']} CPUs")
    print(f"float32 matmul {result['matmul_gflops']:.1f} GFLOP/s; k-means floor {result['floor_seconds']:.1f} s "
          f"({FLOOR_ITERATIONS} iterations x {len(config['k'])} layers)\n")

    columns = ["full"] + ([f"balanced {config['compare_balanced']}"] if "balanced" in result else []) + [f"incr {run['new_fraction']:g}" for run in result.get("incremental", [])]
    records = [result] + ([result["balanced"]] if "balanced" in result else []) + result.get("incremental", [])
    steps = ["load", "keywords"] + [f"rq_layer_{layer}" for layer in range(1, len(config["k"]) + 1)] + ["rq", "opq_train", "opq_encode", "write", "metrics", "total"]
    print(f"{'step (seconds)':<22}" + "".join(f"{column:>14}" for column in columns))
    for step in steps:
        cells = [record.get(f"{step}_seconds") for record in records]
        print(f"{step:<22}" + "".join(f"{cell:>14.2f}" if cell is not None else f"{'-':>14}" for cell in cells))
    for name in ("icr", "peak_rss_mb"):
        print(f"{name:<22}" + "".join(f"{record[name]:>14.4f}" if name == "icr" else f"{record[name]:>14.0f}" for record in records))
    if "baseline" in result:
        baseline = result["baseline"]
        print(f"\nplain faiss k-means (all rows, {FLOOR_ITERATIONS} iterations): RQ {baseline['rq_seconds']:.1f} s, ICR {baseline['icr']:.4f} "
              f"(RQ codes alone {baseline['rq_icr']:.4f}); this pipeline: ICR {result['icr']:.4f} (RQ codes alone {result['rq_icr']:.4f})")
    print(f"keyword enhancement: {result['keywords_keys_per_second']:,.0f} keys/s with {config['dict_terms']:,} terms\n")
    for target in result["targets"]:
        print(f"{'PASS' if target['passed'] else 'MISS'}  {target['name']}: {target['value']:.4g} (limit {target['limit']:.4g})")


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from onesearch_tasks.config import RQConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys in the catalog (queries and items)")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension")
    parser.add_argument("--k", default="1024-1024-1024", help="clusters per RQ layer, e.g. 1024-1024-1024")
    parser.add_argument("--balanced", type=int, choices=(0, 1, 2), default=0, help="balanced type of the main full run")
    parser.add_argument("--compare-balanced", type=int, choices=(0, 1, 2), default=1, help="balanced type of the comparison run; 0 skips it")
    parser.add_argument("--new-fraction", default="0.001,0.01,0.1", help="comma-separated shares of new keys, one incremental run each; empty skips them")
    parser.add_argument("--referlayer", type=int, default=2, help="incremental runs keep layers 1..N and update the rest online")
    parser.add_argument("--query-share", type=float, default=0.2, help="share of keys that are queries")
    parser.add_argument("--dict-terms", type=int, default=100_000, help="keyword dictionary size")
    parser.add_argument("--opq-m", type=int, default=2, help="OPQ sub-quantizers")
    parser.add_argument("--opq-bits", type=int, default=8, help="bits per OPQ code")
    parser.add_argument("--opq-max-train-rows", type=int, default=1_000_000, help="rows sampled for OPQ training (opq.max_train_rows)")
    parser.add_argument("--niter", type=int, default=RQConfig().niter, help="k-means iterations per layer (rq.niter)")
    parser.add_argument("--max-points-per-centroid", type=int, default=RQConfig().max_points_per_centroid, help="faiss training sample per centroid (rq.max_points_per_centroid)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the data and of k-means")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain faiss comparison (it takes about the floor's time)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the generated data and states; default a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject values that would fail only after minutes of work, with one line each."""
    if not re.fullmatch(r"[1-9]\d*(-[1-9]\d*)*", args.k):
        parser.error(f"--k {args.k!r} must be positive cluster counts joined by '-', for example 1024-1024-1024")
    args.k = tuple(int(part) for part in args.k.split("-"))

    try:
        args.new_fractions = [float(part) for part in args.new_fraction.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--new-fraction {args.new_fraction!r} must be comma-separated numbers, for example 0.001,0.01")

    for name in ("keys", "dim", "dict_terms", "niter", "max_points_per_centroid", "opq_m", "opq_bits", "opq_max_train_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")

    if not 0 < args.query_share < 1:
        parser.error(f"--query-share must be between 0 and 1 (exclusive), got {args.query_share}")
    if not 0 <= args.referlayer <= len(args.k):
        parser.error(f"--referlayer {args.referlayer} must be between 0 and the {len(args.k)} layers of --k")
    if any(not 0 < fraction <= 1 for fraction in args.new_fractions):
        parser.error(f"--new-fraction values must be in (0, 1], got {args.new_fraction}")

    if args.dim % args.opq_m:
        parser.error(f"--opq-m {args.opq_m} must divide --dim {args.dim}")
    if args.opq_bits > 16 or min(args.keys, args.opq_max_train_rows) < (1 << args.opq_bits):
        parser.error(f"--opq-bits {args.opq_bits} needs at most 16 bits and at least {1 << args.opq_bits} keys and training rows")
    if args.keys < max(args.k):
        parser.error(f"--keys {args.keys} must be at least the largest layer k ({max(args.k)})")

    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"--json folder {args.json.parent} cannot be created: {error}")
        if not os.access(args.json.parent, os.W_OK):
            parser.error(f"--json folder {args.json.parent} is not writable")


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import faiss

    gflops = measure_matmul_gflops(args.dim, max(args.k))
    logger.info("float32 matmul rate %.1f GFLOP/s; generating %d keys in %s", gflops, args.keys, folder)
    prepare_data(args, folder)

    result: dict[str, Any] = {
        "config": {name: value for name, value in vars(args).items() if name not in ("workdir", "json")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__},
        "matmul_gflops": gflops,
        "floor_seconds": kmeans_floor_seconds(args.keys, args.dim, args.k, gflops),
    }
    logger.info("full refresh (balanced type %d)", args.balanced)
    result.update(run_child(scenario_full, str(folder), args, args.balanced, "reference"))
    result["keywords_keys_per_second"] = args.keys / result["keywords_seconds"]
    if not args.no_baseline:
        logger.info("plain faiss baseline")
        result["baseline"] = run_child(scenario_baseline, str(folder), args)
    if args.compare_balanced:
        logger.info("full refresh (balanced type %d)", args.compare_balanced)
        result["balanced"] = run_child(scenario_full, str(folder), args, args.compare_balanced, "balanced")
    result["incremental"] = []
    for number, fraction in enumerate(args.new_fractions):
        logger.info("incremental refresh with %g new keys", fraction)
        record = run_child(scenario_incremental, str(folder), args, number)
        result["incremental"].append({"new_fraction": fraction, **record})
    result["targets"] = evaluate_targets(result, args)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # faiss logs at INFO which of its CPU builds it tried to load; that is not a result.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = parse_args(argv)
    # Turn SIGTERM (for example from timeout) into SystemExit, so the temporary folder is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="sid-bench-") as folder:
            result = run(args, Path(folder))
    print_report(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    missed = [target["name"] for target in result["targets"] if not target["passed"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
