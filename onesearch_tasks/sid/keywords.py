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

import itertools
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from onesearch_tasks.config import KeywordConfig
from onesearch_tasks.sid.embedders import Embedder, l2_normalize

logger = logging.getLogger(__name__)

KEYWORD_TYPES: tuple[str, ...] = (
    "entity", "modifier", "brand", "material", "style", "function", "location", "audience", "color",
    "scene", "specifications", "price", "model", "anchor", "series", "marketing", "season", "pattern",
)
EMBEDDING_SEPARATOR = "\x02"
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


def _parse_dictionary_line(fields: list[str], dim: int) -> tuple[str, str, int, np.ndarray | None] | str:
    """Return (keyword, type, pv, vector or None) or a rejection reason."""
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
    pv = int(pv_value)

    if not embedding_text:
        return keyword, type_name, pv, None
    try:
        vector = np.array([float(part) for part in embedding_text.split(EMBEDDING_SEPARATOR)], dtype=np.float32)
    except ValueError:
        return "embedding has a value that is not a float"
    if vector.shape[0] != dim:
        return f"embedding has {vector.shape[0]} values, expected {dim}"
    if not np.all(np.isfinite(vector)):
        return "embedding contains NaN or inf"
    if not np.any(vector):
        return "embedding is all zeros"
    return keyword, type_name, pv, vector


def read_dictionary_file(path: Path, embedder: Embedder) -> tuple[KeywordDictionary, list[RejectedLine]]:
    """Read a `keyword \\t type \\t pv \\t emb` file. Bad lines are returned, not raised.

    A line with an empty emb field gets its vector from the embedder.
    Raises KeywordDictionaryError when the file is missing or not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise KeywordDictionaryError(f"keyword dictionary file not found: {path}; fix keywords.dictionary_files")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise KeywordDictionaryError(f"keyword dictionary {path} is not UTF-8: {error}") from error

    keywords, types, pv, vectors = [], [], [], []
    missing_vector_rows: list[int] = []
    rejected: list[RejectedLine] = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parsed = _parse_dictionary_line(line.split("\t"), embedder.dim)
        if isinstance(parsed, str):
            rejected.append(RejectedLine(str(path), line_number, parsed, line[:500]))
            continue
        keyword, type_name, count, vector = parsed
        if vector is None:
            missing_vector_rows.append(len(keywords))
            vector = np.zeros(embedder.dim, dtype=np.float32)
        keywords.append(keyword)
        types.append(type_name)
        pv.append(count)
        vectors.append(vector)

    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(keywords), embedder.dim)
    if missing_vector_rows:
        matrix[missing_vector_rows] = embedder.embed([keywords[row] for row in missing_vector_rows])
    l2_normalize(matrix)
    if rejected:
        logger.warning("keyword dictionary %s: rejected %d of %d lines", path, len(rejected), len(lines))
    return KeywordDictionary(keywords, types, np.asarray(pv, dtype=np.int64), matrix), rejected


class KeywordMatcher:
    """Case-insensitive Aho-Corasick matcher over a dictionary's keywords."""

    def __init__(self, keywords: Sequence[str]) -> None:
        import ahocorasick

        self._automaton = ahocorasick.Automaton()
        for index, keyword in enumerate(keywords):
            lowered = keyword.lower()
            if lowered and lowered not in self._automaton:
                self._automaton.add_word(lowered, (index, len(lowered)))
        self._empty = len(self._automaton) == 0
        if not self._empty:
            self._automaton.make_automaton()

    def match(self, text: str) -> list[int]:
        """Return indices of kept keywords in text, in order of position."""
        if self._empty or not text:
            return []
        spans = [(end + 1 - length, end + 1, index) for end, (index, length) in self._automaton.iter(text.lower())]
        if not spans:
            return []
        spans.sort(key=lambda span: (span[0] - span[1], span[0]))
        kept: list[tuple[int, int, int]] = []
        for start, end, index in spans:
            if any(kept_start <= start and end <= kept_end for kept_start, kept_end, _ in kept):
                continue
            kept.append((start, end, index))
        kept.sort()
        return [index for _, _, index in kept]

    def match_many(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.match(text) for text in texts]


def fuse_embeddings(raw: np.ndarray, matches: Sequence[Sequence[int]], keyword_vectors: np.ndarray, raw_weight: float) -> np.ndarray:
    """Return L2-normalized raw_weight * raw + (1 - raw_weight) * mean(matched vectors).

    raw: (n, d) float32; matches: n index lists into keyword_vectors (k, d). Rows with no
    match are returned unchanged. The input array is not modified.
    """
    if len(matches) != raw.shape[0]:
        raise ValueError(f"{len(matches)} match lists for {raw.shape[0]} vectors")
    fused = np.array(raw, dtype=np.float32, copy=True)
    lengths = np.fromiter((len(row) for row in matches), dtype=np.int64, count=len(matches))
    matched_rows = np.flatnonzero(lengths)
    if matched_rows.size == 0:
        return fused
    flat = np.fromiter(itertools.chain.from_iterable(matches), dtype=np.int64, count=int(lengths.sum()))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[matched_rows]
    means = np.add.reduceat(keyword_vectors[flat], starts, axis=0) / lengths[matched_rows, None]
    fused[matched_rows] = raw_weight * raw[matched_rows] + (1.0 - raw_weight) * means
    fused[matched_rows] = l2_normalize(fused[matched_rows])
    return fused


def format_dictionary_line(keyword: str, type_name: str, pv: int, vector: np.ndarray) -> str:
    """Render one line of the dictionary file format (the inverse of read_dictionary_file)."""
    values = EMBEDDING_SEPARATOR.join(repr(float(value)) if math.isfinite(value) else "nan" for value in vector)
    return f"{keyword}\t{type_name}\t{pv}\t{values}"
