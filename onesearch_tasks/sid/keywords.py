"""Keyword dictionary, Aho-Corasick matching and keyword-enhanced embeddings.

The dictionary covers the 18 e-commerce attribute types in KEYWORD_TYPES. It is built
from the catalog (brand names, category names, attribute values, with item counts as
page-view proxies) and can be extended with files in the format::

    keyword \\t type \\t pv \\t emb        (emb: floats joined by \\x02; may be empty)

Matching is case-insensitive. Matches are sorted longest first and a match that lies
inside an already kept longer match is dropped; partly overlapping matches are both kept.
Enhancement: fused = L2-normalize(w * raw + (1 - w) * mean(matched keyword vectors)) with
w = keywords.raw_weight (0.5 by default); a key with no match keeps its raw vector.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import math
import multiprocessing
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from onesearch_tasks.config import KeywordConfig
from onesearch_tasks.sid.embedders import Embedder, l2_normalize
from onesearch_tasks.storage import atomic_path

logger = logging.getLogger(__name__)

KEYWORD_TYPES: tuple[str, ...] = (
    "entity", "modifier", "brand", "material", "style", "function", "location", "audience", "color",
    "scene", "specifications", "price", "model", "anchor", "series", "marketing", "season", "pattern",
)
EMBEDDING_SEPARATOR = "\x02"
# Joins texts for one matcher pass; keywords that contain it are left out of the matcher.
TEXT_SEPARATOR = "\x00"
MATCH_BATCH_TEXTS = 200_000
# Parallel matching pays for its fork only on large inputs; more processes rarely help.
PARALLEL_MIN_TEXTS = 50_000
PARALLEL_MAX_PROCESSES = 8
FUSE_BATCH_ROWS = 16_384
DICTIONARY_CACHE_FORMAT = 1
DICTIONARY_CACHE_ENTRIES = 8
DICTIONARY_FIELDS = 4
CATEGORY_COLUMNS = ("category_level1_name", "category_level2_name", "category_level3_name")
# Separators inside catalog category names ("瑜伽舞蹈/健身/体育/护具") and attribute lists.
CATEGORY_SPLIT = re.compile(r"[/／]")
ATTRIBUTE_SPLIT = re.compile(r"[,，;；]")

# Heuristic typing of bare attribute values, first match wins; unmatched values are modifiers.
# The catalog does not say which attribute a value belongs to, so this is a best guess that
# only labels the dictionary: matching and fusion do not depend on the type.
ATTRIBUTE_TYPE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("season", re.compile(r"[春夏秋冬]季|[春夏秋冬]装|[春夏秋冬]款|^[春夏秋冬]+$|四季|季节")),
    ("price", re.compile(r"\d+\s*元|价|便宜|实惠|高端|性价比")),
    ("specifications", re.compile(r"\d+\s*(片|支|件|个|只|包|袋|盒|瓶|套|条|双|ml|毫升|l|g|克|kg|千克|cm|厘米|mm|米|寸)|套装|礼盒|件套|装$")),
    ("color", re.compile(r"色|[红橙黄绿青蓝紫黑白灰粉棕金银]$|彩虹")),
    ("material", re.compile(r"棉|麻|丝|绒|毛|皮|革|木|竹|钢|铁|铝|铜|玻璃|陶瓷|塑料|硅胶|尼龙|涤纶|纤维|亚克力|珍珠|金属")),
    ("audience", re.compile(r"男|女|童|婴|宝宝|孕|老人|学生|成人|青少年|岁|中老年|情侣")),
    ("location", re.compile(r"^(北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|海南|四川|贵州|云南|陕西|甘肃|青海|台湾|内蒙古|广西|西藏|宁夏|新疆|香港|澳门|中国|日本|韩国|美国|德国|法国|意大利|泰国|东北|莆田)")),
    ("style", re.compile(r"风|复古|简约|潮|时尚|休闲|优雅|可爱|卡通|ins|国潮|韩版|法式|日系|港风|气质")),
    ("pattern", re.compile(r"领|袖|腰|印花|格纹|条纹|纯色|连帽|开衩|褶|拼接|口袋|高帮|低帮")),
    ("function", re.compile(r"防水|防晒|保暖|加厚|透气|速干|耐磨|收纳|增高|防滑|抗菌|除味|静音|充电|便携|折叠|加绒")),
    ("scene", re.compile(r"户外|室内|家用|办公|客厅|卧室|厨房|浴室|车载|旅行|露营|运动|学校|居家|婚礼|派对")),
    ("marketing", re.compile(r"新款|爆款|包邮|清仓|特价|正品|官方|旗舰|限量|热卖|秒杀|福利|现货")),
    ("series", re.compile(r"系列|版$|pro|max|mini|ultra|lite|plus", re.IGNORECASE)),
    ("model", re.compile(r"^[a-z0-9\-+ .]*\d[a-z0-9\-+ .]*$", re.IGNORECASE)),
)


class KeywordDictionaryError(ValueError):
    """A keyword dictionary file cannot be used."""


@dataclass
class KeywordDictionary:
    """Keywords with their attribute type, page views (pv) and vectors.

    Shapes: keywords, types: length n; pv: (n,) int64; vectors: (n, dim) float32, L2-normalized.
    """

    keywords: list[str]
    types: list[str]
    pv: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.keywords)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def empty(cls, dim: int) -> "KeywordDictionary":
        return cls([], [], np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32))

    def to_frame(self) -> pd.DataFrame:
        """Columns: keyword, type, pv, embedding (list of float32)."""
        return pd.DataFrame(
            {"keyword": self.keywords, "type": self.types, "pv": self.pv, "embedding": list(self.vectors)}
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "KeywordDictionary":
        vectors = np.asarray(np.stack(frame["embedding"].to_numpy()), dtype=np.float32) if len(frame) else None
        dim_hint = 0 if vectors is None else vectors.shape[1]
        return cls(
            keywords=frame["keyword"].tolist(),
            types=frame["type"].tolist(),
            pv=frame["pv"].to_numpy(dtype=np.int64),
            vectors=vectors if vectors is not None else np.zeros((0, dim_hint), dtype=np.float32),
        )

    def merged_with(self, other: "KeywordDictionary") -> "KeywordDictionary":
        """Union by lower-cased keyword. On a clash the higher pv wins, then self."""
        if len(other) and len(self) and other.dim != self.dim:
            raise KeywordDictionaryError(f"cannot merge dictionaries of dimension {self.dim} and {other.dim}")
        chosen: dict[str, tuple[int, int, int]] = {}  # lowered -> (pv, source, index)
        for source, dictionary in enumerate((self, other)):
            for index, keyword in enumerate(dictionary.keywords):
                lowered = keyword.lower()
                candidate = (int(dictionary.pv[index]), -source, index)
                if lowered not in chosen or candidate[:2] > chosen[lowered][:2]:
                    chosen[lowered] = candidate
        order = sorted(chosen.items())
        sources = (self, other)
        dim = self.dim if len(self) else other.dim
        keywords, types, pv, vectors = [], [], [], []
        for _, (_, negative_source, index) in order:
            dictionary = sources[-negative_source]
            keywords.append(dictionary.keywords[index])
            types.append(dictionary.types[index])
            pv.append(dictionary.pv[index])
            vectors.append(dictionary.vectors[index])
        return KeywordDictionary(
            keywords,
            types,
            np.asarray(pv, dtype=np.int64),
            np.asarray(vectors, dtype=np.float32).reshape(len(keywords), dim),
        )


@dataclass(frozen=True)
class RejectedLine:
    """A dictionary file line that was not loaded."""

    path: str
    line_number: int
    reason: str
    line: str


def classify_attribute_value(value: str) -> str:
    """Guess the attribute type of a bare catalog value (see ATTRIBUTE_TYPE_RULES)."""
    for type_name, pattern in ATTRIBUTE_TYPE_RULES:
        if pattern.search(value):
            return type_name
    return "modifier"


def _catalog_terms(items: pd.DataFrame) -> Iterable[tuple[str, str]]:
    """Yield (term, type) for every brand, category part and attribute value of every row."""
    if "brand_name" in items:
        for brand in items["brand_name"].dropna():
            yield brand.strip(), "brand"
    for column in CATEGORY_COLUMNS:
        if column not in items:
            continue
        for name in items[column].dropna():
            for part in CATEGORY_SPLIT.split(name):
                yield part.strip(), "entity"
    if "attr_value" in items:
        for attributes in items["attr_value"].dropna():
            for value in ATTRIBUTE_SPLIT.split(attributes):
                value = value.strip()
                yield value, classify_attribute_value(value)


def build_catalog_dictionary(items: pd.DataFrame, embedder: Embedder, config: KeywordConfig) -> KeywordDictionary:
    """Build a dictionary from catalog columns brand_name, category_level{1,2,3}_name, attr_value.

    pv is the number of times a term occurs in those columns (a page-view proxy). Terms shorter
    than min_keyword_chars, listed in stop_values or below min_pv are left out, and the
    number left out is logged.
    """
    stop = {value.lower() for value in config.stop_values}
    counts: Counter[str] = Counter()
    type_votes: dict[str, Counter[str]] = {}
    surface: dict[str, str] = {}
    dropped = 0
    for term, type_name in _catalog_terms(items):
        lowered = term.lower()
        if len(term) < config.min_keyword_chars or lowered in stop:
            dropped += 1
            continue
        surface.setdefault(lowered, term)
        counts[lowered] += 1
        type_votes.setdefault(lowered, Counter())[type_name] += 1

    keywords, types, pv = [], [], []
    for lowered, count in sorted(counts.items()):
        if count < config.min_pv:
            dropped += 1
            continue
        # Brand and category evidence beats the attribute heuristics; ties go to the type order.
        votes = type_votes[lowered]
        best = max(votes.items(), key=lambda item: (item[0] in ("brand", "entity"), item[1], -KEYWORD_TYPES.index(item[0])))
        keywords.append(surface[lowered])
        types.append(best[0])
        pv.append(count)
    if dropped:
        logger.info("keyword dictionary: left out %d catalog terms (short, stop value or pv < %d)", dropped, config.min_pv)

    vectors = embedder.embed(keywords) if keywords else np.zeros((0, embedder.dim), dtype=np.float32)
    logger.info("keyword dictionary from catalog: %d keywords, types %s", len(keywords), dict(Counter(types)))
    return KeywordDictionary(keywords, types, np.asarray(pv, dtype=np.int64), vectors)


def _parse_line_fields(fields: list[str]) -> tuple[str, str, int, str] | str:
    """Check the keyword, type and pv fields. Return (keyword, type, pv, emb text) or a rejection reason."""
    if len(fields) != DICTIONARY_FIELDS:
        return f"expected {DICTIONARY_FIELDS} tab-separated fields, found {len(fields)}"
    keyword, type_name, pv_text, embedding_text = (field.strip() for field in fields)
    if not keyword or keyword == "\\N":
        return "empty keyword"

    type_name = type_name.lower()
    if type_name not in KEYWORD_TYPES:
        return f"unknown type {type_name!r}; expected one of {', '.join(KEYWORD_TYPES)}"

    try:
        pv_value = float(pv_text)
    except ValueError:
        return f"pv {pv_text!r} is not a number"
    if not math.isfinite(pv_value):
        return f"pv {pv_text!r} is not finite"
    if pv_value < 0:
        return f"pv {pv_value:g} is negative"
    return keyword, type_name, int(pv_value), embedding_text


def _parse_embedding(embedding_text: str, dim: int) -> np.ndarray | str:
    """Parse one emb field into a (dim,) float32 vector, or return a rejection reason."""
    try:
        vector = np.array([float(part) for part in embedding_text.split(EMBEDDING_SEPARATOR)], dtype=np.float32)
    except ValueError:
        return "embedding has a value that is not a float"
    if vector.shape[0] != dim:
        return f"embedding has {vector.shape[0]} values, expected {dim}"
    return vector


def _parse_embeddings(texts: list[str], dim: int) -> tuple[np.ndarray, list[str | None]]:
    """Parse many emb fields at once with pandas' C parser; fall back to one line at a time.

    Returns (vectors (len(texts), dim) float32, one rejection reason or None per field). A
    rejected field's row is zero. The fast path parses the fields that have dim values as
    one CSV block. Any field it cannot parse (a word, an empty value, "nan") sends the
    block to the per-line parser, which names the problem of each line.
    """
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    problems: list[str | None] = [f"embedding has {text.count(EMBEDDING_SEPARATOR) + 1} values, expected {dim}" for text in texts]
    full = [position for position, text in enumerate(texts) if text.count(EMBEDDING_SEPARATOR) == dim - 1]
    if not full:
        return vectors, problems
    try:
        block = pd.read_csv(
            io.StringIO("\n".join(texts[position] for position in full)),
            sep=EMBEDDING_SEPARATOR, header=None, dtype=np.float32, engine="c",
            na_filter=False, quoting=csv.QUOTE_NONE,
        ).to_numpy()
        if block.shape != (len(full), dim):
            raise ValueError(f"parsed block has shape {block.shape}")
        vectors[full] = block
        for position in full:
            problems[position] = None
    except (ValueError, pd.errors.ParserError):
        for position in full:
            parsed = _parse_embedding(texts[position], dim)
            if isinstance(parsed, str):
                problems[position] = parsed
            else:
                vectors[position], problems[position] = parsed, None

    not_finite = ~np.isfinite(vectors).all(axis=1)
    all_zero = ~vectors.any(axis=1)
    for position in np.flatnonzero(not_finite | all_zero):
        if problems[position] is None:
            problems[position] = "embedding contains NaN or inf" if not_finite[position] else "embedding is all zeros"
    return vectors, problems


def _decode_lines(data: bytes) -> tuple[list[str], set[int]]:
    """Return the lines of data and the 1-based numbers of lines that are not valid UTF-8.

    The whole text is decoded at once. Only when that fails is it decoded line by line, and
    then undecodable bytes show as U+FFFD in the returned lines.
    """
    try:
        return data.decode("utf-8").splitlines(), set()
    except UnicodeDecodeError:
        pass
    lines, undecodable = [], set()
    for line_number, raw_line in enumerate(data.splitlines(), start=1):
        try:
            lines.append(raw_line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw_line.decode("utf-8", errors="replace"))
            undecodable.add(line_number)
    return lines, undecodable


def read_dictionary_file(path: Path, embedder: Embedder, data: bytes | None = None) -> tuple[KeywordDictionary, list[RejectedLine]]:
    """Read a `keyword \\t type \\t pv \\t emb` file. Bad lines are returned, not raised.

    A line with an empty emb field gets its vector from the embedder. Rejected lines, lines
    that are not valid UTF-8 among them, come back in file order. data, when given, is the
    file's content already read. Raises KeywordDictionaryError when the file is missing.
    """
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise KeywordDictionaryError(f"keyword dictionary file not found: {path}; fix keywords.dictionary_files")
        data = path.read_bytes()
    lines, undecodable = _decode_lines(data)
    rejected: list[RejectedLine] = []
    parsed_lines: list[tuple[int, str, str, int, str]] = []
    for line_number, line in enumerate(lines, start=1):
        if line_number in undecodable:
            rejected.append(RejectedLine(str(path), line_number, "line is not valid UTF-8; fix the file's encoding", line[:500]))
            continue
        if not line.strip() or line.startswith("#"):
            continue
        parsed = _parse_line_fields(line.split("\t"))
        if isinstance(parsed, str):
            rejected.append(RejectedLine(str(path), line_number, parsed, line[:500]))
        else:
            parsed_lines.append((line_number, *parsed))

    given_positions = [position for position, entry in enumerate(parsed_lines) if entry[4]]
    given_vectors, given_problems = _parse_embeddings([parsed_lines[position][4] for position in given_positions], embedder.dim)
    matrix = np.zeros((len(parsed_lines), embedder.dim), dtype=np.float32)
    matrix[given_positions] = given_vectors
    kept = np.ones(len(parsed_lines), dtype=bool)
    for position, problem in zip(given_positions, given_problems):
        if problem is not None:
            line_number = parsed_lines[position][0]
            rejected.append(RejectedLine(str(path), line_number, problem, lines[line_number - 1][:500]))
            kept[position] = False

    entries = [entry for entry, keep in zip(parsed_lines, kept) if keep]
    keywords = [entry[1] for entry in entries]
    matrix = matrix[kept]
    missing_vector_rows = [row for row, entry in enumerate(entries) if not entry[4]]
    if missing_vector_rows:
        matrix[missing_vector_rows] = embedder.embed([keywords[row] for row in missing_vector_rows])
    l2_normalize(matrix)
    rejected.sort(key=lambda entry: entry.line_number)
    if rejected:
        logger.warning("keyword dictionary %s: rejected %d of %d lines", path, len(rejected), len(lines))
    types = [entry[2] for entry in entries]
    pv = np.asarray([entry[3] for entry in entries], dtype=np.int64)
    return KeywordDictionary(keywords, types, pv, matrix), rejected


def read_dictionary_file_cached(path: Path, embedder: Embedder, cache_dir: Path) -> tuple[KeywordDictionary, list[RejectedLine]]:
    """read_dictionary_file, reusing the result stored for the same file content and embedder.

    Dictionary files change rarely, so a daily run usually loads yesterday's parsed arrays
    instead of parsing every line again. Entries live in cache_dir/<sha256 of the file and
    the embedder signature>/ as parquet and npy files. An entry that cannot be read is
    parsed again, and only the DICTIONARY_CACHE_ENTRIES most recently used entries are kept.
    """
    path = Path(path)
    if not path.is_file():
        raise KeywordDictionaryError(f"keyword dictionary file not found: {path}; fix keywords.dictionary_files")
    data = path.read_bytes()
    digest = hashlib.sha256()
    digest.update(f"dictionary-cache/v{DICTIONARY_CACHE_FORMAT}/{embedder.signature()}\n".encode())
    digest.update(data)
    entry = Path(cache_dir) / digest.hexdigest()
    if entry.is_dir():
        try:
            terms = pd.read_parquet(entry / "terms.parquet")
            vectors = np.load(entry / "vectors.npy", allow_pickle=False)
            rejected_rows = pd.read_parquet(entry / "rejected.parquet")
        except (OSError, ValueError) as error:
            logger.warning("keyword dictionary cache entry %s cannot be read (%s); parsing %s again", entry, error, path)
        else:
            os.utime(entry)
            dictionary = KeywordDictionary(terms["keyword"].tolist(), terms["type"].tolist(), terms["pv"].to_numpy(dtype=np.int64), vectors)
            rejected = [RejectedLine(str(path), int(row.line_number), row.reason, row.line) for row in rejected_rows.itertuples()]
            return dictionary, rejected

    dictionary, rejected = read_dictionary_file(path, embedder, data)
    with atomic_path(entry) as tmp:
        tmp.mkdir(parents=True)
        pd.DataFrame({"keyword": dictionary.keywords, "type": dictionary.types, "pv": dictionary.pv}).to_parquet(tmp / "terms.parquet", index=False)
        np.save(tmp / "vectors.npy", dictionary.vectors, allow_pickle=False)
        pd.DataFrame([vars(line) for line in rejected], columns=["path", "line_number", "reason", "line"]).to_parquet(tmp / "rejected.parquet", index=False)
    _prune_cache(Path(cache_dir))
    return dictionary, rejected


def _prune_cache(cache_dir: Path) -> None:
    entries = sorted((entry for entry in cache_dir.iterdir() if entry.is_dir() and not entry.name.startswith(".")), key=lambda entry: entry.stat().st_mtime, reverse=True)
    for stale in entries[DICTIONARY_CACHE_ENTRIES:]:
        shutil.rmtree(stale, ignore_errors=True)


class KeywordMatcher:
    """Case-insensitive Aho-Corasick matcher over a dictionary's keywords.

    match_arrays scans many texts in one pass over their concatenation, so Python creates
    only one tuple per match. Containment between matches is then resolved with numpy.

    Keywords and texts go into the automaton as UTF-8 bytes, each byte read as one Latin-1
    character. A node then has at most 256 children instead of one per Chinese character
    (thousands below the root), which makes the scan about 2.5 times faster with a 100k-term
    Chinese dictionary (benchmarks/sid_refresh.py). A byte match is always a character
    match, because UTF-8 lead bytes never occur inside another character's bytes.
    """

    def __init__(self, keywords: Sequence[str]) -> None:
        import ahocorasick

        self._automaton = ahocorasick.Automaton()
        lengths = np.zeros(len(keywords), dtype=np.int64)
        skipped = 0
        for index, keyword in enumerate(keywords):
            lowered = keyword.lower()
            if TEXT_SEPARATOR in lowered:
                skipped += 1
                continue
            encoded = _as_byte_string(lowered)
            if encoded and encoded not in self._automaton:
                self._automaton.add_word(encoded, index)
                lengths[index] = len(encoded)
        if skipped:
            logger.warning("keyword matcher: left out %d keywords that contain the NUL character", skipped)
        self._lengths = lengths
        self._empty = len(self._automaton) == 0
        if not self._empty:
            self._automaton.make_automaton()

    def match_arrays(self, texts: Sequence[str], processes: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Return (rows, keyword indices) of the kept matches, both (m,) int64.

        Pairs are ordered by row, then by position in the text. A match that lies inside a
        longer match of the same text is dropped. With processes > 1 and at least
        PARALLEL_MIN_TEXTS texts, batches are matched in forked worker processes, which
        inherit the automaton instead of rebuilding it; the result is the same.
        """
        if self._empty or not len(texts):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        processes = min(processes, PARALLEL_MAX_PROCESSES)
        # A daemonic process (a multiprocessing.Pool worker) may not start children.
        parallel = (
            processes > 1
            and len(texts) >= PARALLEL_MIN_TEXTS
            and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon
        )
        batch_size = min(MATCH_BATCH_TEXTS, -(-len(texts) // (processes * 4))) if parallel else MATCH_BATCH_TEXTS
        bounds = [(start, min(start + batch_size, len(texts))) for start in range(0, len(texts), batch_size)]
        if parallel:
            results = _match_in_workers(self, texts, bounds, processes)
        else:
            results = [self._match_batch(texts[start:stop]) for start, stop in bounds]
        rows = [batch_rows.astype(np.int64) + start for (start, _), (batch_rows, _) in zip(bounds, results)]
        indices = [batch_indices.astype(np.int64) for _, batch_indices in results]
        return np.concatenate(rows), np.concatenate(indices)

    def _match_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [text.lower().encode("utf-8", "surrogatepass") if text else b"" for text in texts]
        widths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) + len(TEXT_SEPARATOR)
        text_starts = np.cumsum(widths) - widths
        joined = TEXT_SEPARATOR.encode("ascii").join(encoded).decode("latin-1")
        # One pass from the automaton's (end, keyword) tuples straight into an array.
        flat = np.fromiter(itertools.chain.from_iterable(self._automaton.iter(joined)), dtype=np.int64)
        if flat.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        ends, indices = flat[0::2] + 1, flat[1::2]
        starts = ends - self._lengths[indices]

        # Sort by start, longer first at equal starts. A match is inside a longer one exactly
        # when some earlier match in this order ends at or after its end. Matches never span
        # two texts, so the running maximum needs no reset between texts.
        order = np.lexsort((-ends, starts))
        sorted_ends = ends[order]
        earlier_max_end = np.maximum.accumulate(np.concatenate(([-1], sorted_ends[:-1])))
        kept = order[earlier_max_end < sorted_ends]
        rows = np.searchsorted(text_starts, starts[kept], side="right") - 1
        return rows, indices[kept]

    def match(self, text: str) -> list[int]:
        """Return indices of kept keywords in text, in order of position."""
        return self.match_many([text])[0]

    def match_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Return one list of keyword indices per text (see match_arrays)."""
        rows, indices = self.match_arrays(texts)
        bounds = np.searchsorted(rows, np.arange(len(texts) + 1))
        return [chunk.tolist() for chunk in np.split(indices, bounds[1:-1])] if len(texts) else []


# Matcher and texts of the running match_in_workers call; forked workers inherit them.
_FORKED_STATE: tuple["KeywordMatcher", Sequence[str]] | None = None


def _match_forked_range(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    assert _FORKED_STATE is not None
    matcher, texts = _FORKED_STATE
    rows, indices = matcher._match_batch(texts[bounds[0] : bounds[1]])
    # int32 halves what travels back through the pipe; rows are per batch and indices per keyword.
    return rows.astype(np.int32), indices.astype(np.int32)


def _match_in_workers(matcher: "KeywordMatcher", texts: Sequence[str], bounds: list[tuple[int, int]], processes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Match each (start, stop) range of texts in a pool of forked processes, results in order."""
    global _FORKED_STATE
    _FORKED_STATE = (matcher, texts)
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            return pool.map(_match_forked_range, bounds, chunksize=1)
    finally:
        _FORKED_STATE = None


def _as_byte_string(text: str) -> str:
    """Return the UTF-8 bytes of text as a str with one Latin-1 character per byte."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def fuse_embeddings(raw: np.ndarray, matches: Sequence[Sequence[int]], keyword_vectors: np.ndarray, raw_weight: float) -> np.ndarray:
    """Return L2-normalized raw_weight * raw + (1 - raw_weight) * mean(matched vectors).

    raw: (n, d) float32; matches: n index lists into keyword_vectors (k, d). Rows with no
    match are returned unchanged. The input array is not modified.
    """
    if len(matches) != raw.shape[0]:
        raise ValueError(f"{len(matches)} match lists for {raw.shape[0]} vectors")
    lengths = np.fromiter((len(row) for row in matches), dtype=np.int64, count=len(matches))
    rows = np.repeat(np.arange(len(matches), dtype=np.int64), lengths)
    flat = np.fromiter(itertools.chain.from_iterable(matches), dtype=np.int64, count=int(lengths.sum()))
    return fuse_matches(raw, rows, flat, keyword_vectors, raw_weight)


def fuse_matches(raw: np.ndarray, rows: np.ndarray, keyword_indices: np.ndarray, keyword_vectors: np.ndarray, raw_weight: float, in_place: bool = False) -> np.ndarray:
    """fuse_embeddings for matches given as (rows, keyword indices) pairs sorted by row.

    Works through FUSE_BATCH_ROWS matched rows at a time, so the sums never need more than
    a batch's worth of memory. in_place=True writes into raw (float32) instead of a copy.
    """
    fused = raw if in_place else np.array(raw, dtype=np.float32, copy=True)
    if in_place and raw.dtype != np.float32:
        raise ValueError(f"in-place fusion needs float32 vectors, got {raw.dtype}")
    if rows.size == 0:
        return fused
    if np.any(np.diff(rows) < 0):
        raise ValueError("match rows must be sorted in ascending order")
    group_starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    group_sizes = np.diff(np.append(group_starts, rows.size))
    for first in range(0, group_starts.size, FUSE_BATCH_ROWS):
        starts = group_starts[first : first + FUSE_BATCH_ROWS]
        sizes = group_sizes[first : first + FUSE_BATCH_ROWS]
        # Round j adds the j-th match of every row that has more than j matches. Rows have
        # few matches each, so this beats np.add.reduceat, which is slow along axis 0.
        sums = np.zeros((starts.size, keyword_vectors.shape[1]), dtype=np.float32)
        for offset in range(int(sizes.max())):
            members = np.flatnonzero(sizes > offset)
            sums[members] += keyword_vectors[keyword_indices[starts[members] + offset]]
        target = rows[starts]
        sums /= sizes[:, None].astype(np.float32)
        mixed = raw_weight * raw[target] + (1.0 - raw_weight) * sums
        fused[target] = l2_normalize(mixed.astype(np.float32, copy=False))
    return fused


def format_dictionary_line(keyword: str, type_name: str, pv: int, vector: np.ndarray) -> str:
    """Render one line of the dictionary file format (the inverse of read_dictionary_file)."""
    values = EMBEDDING_SEPARATOR.join(repr(float(value)) if math.isfinite(value) else "nan" for value in vector)
    return f"{keyword}\t{type_name}\t{pv}\t{values}"
