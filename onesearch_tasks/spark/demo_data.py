"""Generate deterministic synthetic data in the public KuaiSearch JSONL schema, with ids that join.

The public KuaiSearch demo files have the field names and JSON types of the full data set,
but their ids do not join across files, so they cannot drive a pipeline end to end. This
module writes the same five files at any size, with every id resolving:

items.jsonl
    One row per catalog item, ``item_id`` 1..n_items: title, brand, seller and three
    category levels (level 3 may be id 0 with name "UNKNOWN"). Extra field ``attr_value``
    lists the item's attribute values, comma-separated, brand and product noun included.
users.jsonl
    One row per user, ``user_id`` 1..n_users: gender, age bucket and the frequent country,
    province and city.
recall.jsonl
    One row per search session, ``sessions_per_user`` per user, numbered user by user.
    A row has the query, the impressed items in display order, the clicked subset of the
    impressions, the purchased subset of the clicks and ``time_index``, which strictly
    increases per user. ``split`` is "train" before VALID_START_SHARE of
    TIME_INDEX_HORIZON, "test" from TEST_START_SHARE of it on, and "valid" in between.
rank.jsonl
    One row per (session, target item) for the session's clicked items (at most
    ``RANK_MAX_CLICKED_PER_SESSION``) and ``RANK_UNCLICKED_PER_SESSION`` unclicked ones:
    the user's clicks and purchases in earlier sessions (oldest first, the last
    HISTORY_LENGTH kept), ``is_clicked``/``is_purchased`` as in recall.jsonl, the
    target's price in fen and user and item statistics. The item statistics are fixed per
    item; the user statistics are a per-user baseline plus the user's earlier sessions.
relevance.jsonl
    Labelled (query, item) pairs. The first session of each distinct query contributes
    ``RELEVANCE_IMPRESSED_PER_QUERY`` of its impressed items and one random catalog item.
    ``score`` is 3 for the query's leaf category with a shared attribute value, 2 for the
    leaf category alone, 1 for the same level-1 category and 0 otherwise. Extra field
    ``item_id`` names the catalog item whose current title is ``item_title``.

Determinism: the same arguments give byte-identical files. Items are drawn in blocks of
``ITEM_BLOCK_SIZE``, each from its own generator seeded by (seed, block index), so item i
depends only on (seed, i) and a larger ``n_items`` extends the catalog without changing
its first rows. Users work the same way, and the sessions of a user block depend on that
block and on the item catalog. ``changed_fraction`` retitles a ``change_seed``-chosen share
of the items (a bracketed marketing word in front) to simulate the next day's catalog.
Nothing else in any file depends on it, except the titles that relevance.jsonl copies.

Draws are vectorised with numpy and rows are streamed to the files block by block, so
memory holds numeric tables, never all rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

UNKNOWN_CATEGORY_NAME = "UNKNOWN"
UNKNOWN_CATEGORY_ID = 0

# Level-1 name -> level-2 name -> level-3 name -> product nouns ("entity" words) of that leaf.
# A level-3 name of UNKNOWN_CATEGORY_NAME means the level-2 category has no level 3, which
# is written as id 0, as in the public data. Every noun belongs to exactly one leaf.
CATEGORY_TREE: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "女装": {
        "羽绒服/棉服": {"羽绒服": ("羽绒服", "羽绒马甲"), "棉服": ("棉服", "棉袄")},
        "连衣裙": {UNKNOWN_CATEGORY_NAME: ("连衣裙", "半身裙")},
        "裤子": {"休闲裤装": ("阔腿裤", "休闲裤"), "牛仔裤装": ("牛仔裤",)},
    },
    "男装": {
        "T恤": {UNKNOWN_CATEGORY_NAME: ("T恤", "短袖")},
        "外套": {"夹克": ("夹克", "冲锋衣"), "风衣": ("风衣",)},
        "衬衫": {"长袖衬衫": ("衬衫", "格子衫")},
    },
    "鞋靴": {
        "运动鞋": {"跑步鞋": ("跑步鞋", "运动鞋"), "板鞋": ("板鞋", "帆布鞋")},
        "拖鞋": {UNKNOWN_CATEGORY_NAME: ("拖鞋", "棉拖鞋")},
    },
    "家纺": {
        "床上用品": {"床品套件": ("四件套", "床单"), "枕头": ("枕头", "枕套")},
        "地毯地垫": {"地毯": ("地毯", "地垫")},
    },
    "美容护肤": {
        "面部护理": {"洁面用品": ("洗面奶", "洁面乳"), "面霜": ("面霜", "乳液")},
        "面膜": {UNKNOWN_CATEGORY_NAME: ("面膜", "睡眠面膜")},
    },
    "零食/坚果/特产": {
        "坚果炒货": {"每日坚果": ("坚果", "核桃", "夏威夷果")},
        "饼干糕点": {UNKNOWN_CATEGORY_NAME: ("饼干", "蛋糕")},
        "肉干肉脯": {"牛肉干": ("牛肉干", "猪肉脯")},
    },
    "手机/数码/电脑办公": {
        "手机配件": {"手机壳": ("手机壳",), "充电器": ("充电器", "数据线")},
        "影音电器": {"蓝牙耳机": ("蓝牙耳机", "头戴耳机")},
    },
    "家居生活": {
        "收纳整理": {"收纳箱": ("收纳箱", "收纳盒")},
        "厨房用品": {"锅具": ("炒锅", "不粘锅"), "水杯": ("保温杯", "水杯")},
    },
    "户外/运动": {
        "户外装备": {"帐篷": ("帐篷", "天幕"), "背包": ("登山包", "双肩包")},
        "健身器材": {UNKNOWN_CATEGORY_NAME: ("瑜伽垫", "哑铃")},
    },
    "童装/玩具": {
        "童装": {"儿童套装": ("童装套装", "卫衣")},
        "玩具": {"积木": ("积木", "拼图"), "毛绒玩具": ("毛绒玩具", "公仔")},
    },
    "宠物生活": {
        "猫狗食品": {"猫粮": ("猫粮",), "狗粮": ("狗粮",)},
        "宠物用品": {UNKNOWN_CATEGORY_NAME: ("猫砂", "猫窝")},
    },
}

_ENTITY_NOUNS: tuple[str, ...] = tuple(
    noun
    for level2s in CATEGORY_TREE.values()
    for level3s in level2s.values()
    for nouns in level3s.values()
    for noun in nouns
)

# Attribute type (the 18 KuaiSearch query/item attribute types) -> values. "entity" is the
# product nouns of CATEGORY_TREE in tree order. The first brand means "no brand" and, as in
# the public data, is written to brand_name but never into a title or query. No value
# appears under two types, so a shared word always means a shared attribute.
ATTRIBUTE_VOCABULARY: dict[str, tuple[str, ...]] = {
    "entity": _ENTITY_NOUNS,
    "modifier": (
        "加厚", "宽松", "修身", "显瘦", "高腰", "大码", "薄款", "长款", "短款", "加绒",
        "便携", "迷你", "大容量", "超薄", "轻量", "百搭", "正品", "网红",
    ),
    "brand": (
        "无品牌", "南极人", "恒源祥", "雅鹿", "回力", "鸿星尔克", "三只松鼠", "良品铺子",
        "百草味", "小米", "华为", "苏泊尔", "美的", "九阳", "罗莱", "水星家纺", "自然堂",
        "百雀羚", "珀莱雅", "安踏", "李宁", "乐扣乐扣", "得力", "晨光", "洽洽", "巴拉巴拉",
        "麦富迪", "伯纳天纯",
    ),
    "material": (
        "纯棉", "真丝", "羊毛", "羊绒", "桑蚕丝", "涤纶", "亚麻", "皮革", "不锈钢", "实木",
        "陶瓷", "玻璃", "硅胶", "竹纤维", "白鸭绒", "牛仔布", "冰丝", "莫代尔",
    ),
    "style": (
        "韩版", "简约", "复古", "法式", "国潮", "中式", "日系", "北欧", "欧美", "学院风",
        "通勤", "甜美", "商务", "休闲", "运动风", "ins风",
    ),
    "function": (
        "保暖", "防水", "透气", "速干", "防晒", "抗菌", "防滑", "防臭", "补水", "控油",
        "美白", "降噪", "快充", "收纳", "耐磨", "防风",
    ),
    "location": (
        "新疆", "云南", "东北", "四川", "山东", "浙江", "广东", "福建", "内蒙古", "西藏",
        "海南", "江西",
    ),
    "audience": (
        "女", "男", "儿童", "女童", "男童", "宝宝", "学生", "中老年", "孕妇", "情侣", "妈妈",
        "爸爸",
    ),
    "color": (
        "黑色", "白色", "红色", "粉色", "蓝色", "灰色", "米白色", "卡其色", "藏青色", "酒红色",
        "墨绿色", "杏色", "紫色", "黄色", "咖啡色",
    ),
    "scene": (
        "户外", "居家", "办公室", "宿舍", "旅行", "露营", "婚礼", "派对", "健身房", "车载",
        "厨房", "卧室", "上班", "约会",
    ),
    "specifications": (
        "500ml", "1kg", "5斤装", "10包", "大号", "小号", "均码", "两件套", "三件套",
        "家庭装", "礼盒装", "整箱", "单件", "4条装",
    ),
    "price": ("9.9元包邮", "平价", "百元以内", "高档", "特价", "轻奢", "大牌平替", "白菜价"),
    "model": (
        "经典款", "升级款", "旗舰版", "标准版", "豪华版", "Pro版", "青春版", "加大款",
        "2025款", "基础款",
    ),
    "anchor": ("小美直播间", "阿强严选", "甜甜推荐", "老王好物", "丽丽优选", "大鹏精选"),
    "series": ("经典系列", "星空系列", "小白系列", "极光系列", "森林系列", "复古系列", "樱花系列", "冰川系列"),
    "marketing": (
        "新品", "爆款", "包邮", "限时特惠", "官方正品", "直播专享", "清仓", "买一送一",
        "热卖", "厂家直销", "福利", "现货",
    ),
    "season": ("春季", "夏季", "秋季", "冬季", "春秋款", "秋冬款", "四季款", "2025春季", "2025秋季"),
    "pattern": (
        "碎花", "格子", "条纹", "波点", "卡通", "纯色", "印花", "刺绣", "豹纹", "字母", "迷彩",
        "拼色",
    ),
}
ATTRIBUTE_TYPES: tuple[str, ...] = tuple(ATTRIBUTE_VOCABULARY)
NO_BRAND_INDEX = 0

# Share of items that carry each optional attribute type. Every item has an entity noun and
# a brand (possibly "no brand").
ATTRIBUTE_PRESENCE: dict[str, float] = {
    "modifier": 0.5,
    "material": 0.45,
    "style": 0.45,
    "function": 0.4,
    "location": 0.25,
    "audience": 0.4,
    "color": 0.4,
    "scene": 0.3,
    "specifications": 0.35,
    "price": 0.2,
    "model": 0.2,
    "anchor": 0.05,
    "series": 0.15,
    "marketing": 0.25,
    "season": 0.4,
    "pattern": 0.2,
}
NO_BRAND_SHARE = 0.3

# Brands that items and queries of each level-1 category use (besides "no brand").
LEVEL1_BRANDS: dict[str, tuple[str, ...]] = {
    "女装": ("南极人", "恒源祥", "雅鹿"),
    "男装": ("南极人", "恒源祥", "雅鹿", "李宁"),
    "鞋靴": ("回力", "鸿星尔克", "安踏", "李宁"),
    "家纺": ("罗莱", "水星家纺", "南极人"),
    "美容护肤": ("自然堂", "百雀羚", "珀莱雅"),
    "零食/坚果/特产": ("三只松鼠", "良品铺子", "百草味", "洽洽"),
    "手机/数码/电脑办公": ("小米", "华为"),
    "家居生活": ("苏泊尔", "美的", "九阳", "乐扣乐扣"),
    "户外/运动": ("安踏", "李宁", "鸿星尔克"),
    "童装/玩具": ("巴拉巴拉", "得力", "晨光"),
    "宠物生活": ("麦富迪", "伯纳天纯"),
}

# Attribute types that make no sense for a level-1 category are never drawn for its items
# or queries (no "纯棉坚果").
LEVEL1_EXCLUDED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "零食/坚果/特产": frozenset({"material", "color", "pattern", "style", "function", "modifier"}),
    "宠物生活": frozenset({"material", "pattern", "style", "modifier", "season", "audience"}),
    "美容护肤": frozenset({"material", "pattern", "color", "modifier"}),
    "手机/数码/电脑办公": frozenset({"season"}),
}

# Word order of titles. Types missing here ("location", "price") appear only in attr_value.
TITLE_WORD_ORDER: tuple[str, ...] = (
    "marketing", "anchor", "season", "brand", "series", "style", "material", "color",
    "pattern", "modifier", "entity", "model", "audience", "function", "scene",
    "specifications",
)
# Order of attr_value. Every attribute the item has is listed, brand always.
ATTR_VALUE_ORDER: tuple[str, ...] = (
    "brand", "entity", "season", "style", "material", "color", "pattern", "modifier",
    "audience", "function", "scene", "specifications", "location", "price", "model",
    "series", "anchor", "marketing",
)

# Queries: 1-3 of these attribute words plus the leaf's noun. Audience words follow the
# noun ("冬季加厚羽绒服女"), the others precede it in this order.
QUERY_ATTRIBUTE_TYPES: tuple[str, ...] = (
    "brand", "season", "style", "material", "color", "pattern", "modifier", "location",
    "scene", "function", "audience",
)
QUERY_SUFFIX_TYPES = frozenset({"audience"})
QUERY_MIN_ATTRIBUTES = 1
QUERY_MAX_ATTRIBUTES = 3

SELLER_NAME_PREFIXES: tuple[str, ...] = (
    "小美", "阿强", "佳佳", "优品", "诚信", "鑫源", "乐购", "好物", "金牌", "源头", "星辰",
    "阳光", "品质", "实惠", "欢乐", "悦享",
)
SELLER_NAME_SUFFIXES: tuple[str, ...] = ("旗舰店", "专营店", "工厂店", "小店", "优选", "严选")

COUNTRY = "中国"
# (province, city) pairs users are drawn from, with equal weight.
USER_REGIONS: tuple[tuple[str, str], ...] = (
    ("山东", "济南"), ("山东", "青岛"), ("辽宁", "沈阳"), ("辽宁", "鞍山"), ("黑龙江", "哈尔滨"),
    ("黑龙江", "齐齐哈尔"), ("广东", "广州"), ("广东", "深圳"), ("河北", "石家庄"),
    ("浙江", "杭州"), ("浙江", "宁波"), ("内蒙古", "呼和浩特"), ("江苏", "南京"),
    ("河南", "郑州"), ("山西", "太原"), ("四川", "成都"), ("重庆", "重庆"), ("天津", "天津"),
    ("北京", "北京"), ("湖北", "武汉"), ("安徽", "阜阳"), ("甘肃", "天水"),
)
# Age buckets of the public data with the share of users in each.
AGE_BUCKET_SHARES: dict[str, float] = {
    "0-11": 0.01,
    "12-17": 0.12,
    "18-23": 0.15,
    "24-30": 0.15,
    "31-40": 0.25,
    "41-49": 0.17,
    "50+": 0.15,
}
FEMALE_SHARE = 0.6
SEARCH_ENTRANCE_SHARES: dict[str, float] = {"homepage": 0.6, "mall": 0.4}

# --------------------------------------------------------------------------------------
# Generation parameters
# --------------------------------------------------------------------------------------

ITEM_BLOCK_SIZE = 8192
USER_BLOCK_SIZE = 8192
FIRST_ITEM_ID = 1
FIRST_USER_ID = 1
FIRST_SESSION_ID = 1
MAX_SESSIONS_PER_USER = 1000

# Distinct values for the generator streams, so items, users, sessions, queries and title
# changes never share random numbers even under equal seeds.
_ITEM_STREAM = 1
_USER_STREAM = 2
_SESSION_STREAM = 3
_QUERY_STREAM = 4
_CHANGE_STREAM = 5

# Prices are in fen (0.01 yuan), rounded to PRICE_STEP_FEN, and log-normal around the
# median of the item's level-1 category.
# NOTE: the public KuaiSearch demo does not state the unit of target_item_price. Fen fits
# its values (1190.0 to 13500.0 for dance clothing and sports shoes), but that is a guess.
LEVEL1_MEDIAN_PRICE_FEN: dict[str, float] = {
    "女装": 12_000.0,
    "男装": 10_000.0,
    "鞋靴": 9_000.0,
    "家纺": 8_000.0,
    "美容护肤": 6_000.0,
    "零食/坚果/特产": 3_000.0,
    "手机/数码/电脑办公": 5_000.0,
    "家居生活": 4_000.0,
    "户外/运动": 15_000.0,
    "童装/玩具": 6_000.0,
    "宠物生活": 7_000.0,
}
PRICE_LOG_SIGMA = 0.6
PRICE_STEP_FEN = 10.0
MIN_PRICE_FEN = 100.0

# 30-day item statistics: shows are log-normal, clicks Binomial(shows, CTR) and orders
# Binomial(clicks, CVR), with per-item CTR and CVR drawn from Beta distributions.
ITEM_SHOW_LOG_MEAN = 4.0
ITEM_SHOW_LOG_SIGMA = 1.5
ITEM_CTR_BETA = (2.0, 40.0)
ITEM_CVR_BETA = (1.0, 30.0)

# Users' activity before the log starts, which rank.jsonl adds to the counts of earlier
# sessions. GMV is orders times a log-normal order value in fen.
USER_SHOW_LOG_MEAN = 5.0
USER_SHOW_LOG_SIGMA = 1.2
USER_CTR_BETA = (2.0, 30.0)
USER_ORDER_PER_CLICK = 0.05
USER_ORDER_VALUE_LOG_MEAN = float(np.log(5_000.0))
USER_ORDER_VALUE_LOG_SIGMA = 0.8
USER_FAN_LOG_MEAN = 3.0
USER_FOLLOW_LOG_MEAN = 4.0
USER_SOCIAL_LOG_SIGMA = 1.5

# Each user has one interest leaf category, drawn with Zipf weights over the leaves in
# tree order. A session searches that leaf with INTEREST_LEAF_PROBABILITY, otherwise a
# leaf drawn the same way.
LEAF_ZIPF_EXPONENT = 0.8
INTEREST_LEAF_PROBABILITY = 0.7
# Within a leaf, the query is the one of popularity rank r < MAX_QUERY_RANK, with weight
# 1 / (r + 1) ** QUERY_ZIPF_EXPONENT, so popular queries repeat across users.
MAX_QUERY_RANK = 200
QUERY_ZIPF_EXPONENT = 1.1

# Sessions are spread over time_index 0..TIME_INDEX_HORIZON - 1. Sessions from
# VALID_START_SHARE of the horizon on are "valid" and from TEST_START_SHARE on "test".
TIME_INDEX_HORIZON = 500_000
VALID_START_SHARE = 0.8
TEST_START_SHARE = 0.9

# Impressions per session, counted before repeated items are dropped. Each impression
# comes from one of four pools: items of the query's leaf that share one of its attribute
# values, any item of the leaf, any item of the query's level-1 category, or the catalog.
# An empty pool falls back to the next wider one.
MIN_IMPRESSIONS = 10
MAX_IMPRESSIONS = 30
IMPRESSION_SOURCE_SHARES: dict[str, float] = {
    "attribute": 0.35,
    "leaf": 0.35,
    "level1": 0.15,
    "catalog": 0.15,
}

# Click probability: a base by relation to the query, plus a bonus per shared attribute
# value, times a position discount 1 / log2(position + 2), capped.
CLICK_BASE_SAME_LEAF = 0.10
CLICK_BASE_SAME_LEVEL1 = 0.03
CLICK_BASE_OTHER = 0.01
CLICK_BONUS_PER_SHARED_ATTRIBUTE = 0.12
MAX_CLICK_PROBABILITY = 0.9
PURCHASE_PROBABILITY_PER_CLICK = 0.08

RANK_MAX_CLICKED_PER_SESSION = 5
RANK_UNCLICKED_PER_SESSION = 3
HISTORY_LENGTH = 20
RELEVANCE_IMPRESSED_PER_QUERY = 3

CHANGED_TITLE_TEMPLATE = "【{word}】{title}"

FILE_NAMES: tuple[str, ...] = ("items.jsonl", "users.jsonl", "recall.jsonl", "rank.jsonl", "relevance.jsonl")


# --------------------------------------------------------------------------------------
# Derived lookup tables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    """A leaf of CATEGORY_TREE with its written ids and the global indices of its nouns."""

    level1_index: int
    level1_id: int
    level1_name: str
    level2_id: int
    level2_name: str
    level3_id: int
    level3_name: str
    first_entity: int
    entity_count: int


def _build_leaves() -> tuple[_Leaf, ...]:
    """Number the tree: ids count from 1 in tree order per level, level 3 UNKNOWN is id 0."""
    leaves = []
    level2_id = 0
    level3_id = 0
    entity_index = 0
    for level1_index, (level1_name, level2s) in enumerate(CATEGORY_TREE.items()):
        for level2_name, level3s in level2s.items():
            level2_id += 1
            for level3_name, nouns in level3s.items():
                if level3_name == UNKNOWN_CATEGORY_NAME:
                    written_level3_id = UNKNOWN_CATEGORY_ID
                else:
                    level3_id += 1
                    written_level3_id = level3_id
                leaves.append(
                    _Leaf(
                        level1_index=level1_index,
                        level1_id=level1_index + 1,
                        level1_name=level1_name,
                        level2_id=level2_id,
                        level2_name=level2_name,
                        level3_id=written_level3_id,
                        level3_name=level3_name,
                        first_entity=entity_index,
                        entity_count=len(nouns),
                    )
                )
                entity_index += len(nouns)
    return tuple(leaves)


_LEAVES = _build_leaves()
_LEAF_COUNT = len(_LEAVES)
_LEVEL1_COUNT = len(CATEGORY_TREE)
_LEAF_LEVEL1 = np.array([leaf.level1_index for leaf in _LEAVES], dtype=np.int64)
_LEAF_FIRST_ENTITY = np.array([leaf.first_entity for leaf in _LEAVES], dtype=np.int64)
_LEAF_ENTITY_COUNT = np.array([leaf.entity_count for leaf in _LEAVES], dtype=np.int64)
_TYPE_INDEX = {name: index for index, name in enumerate(ATTRIBUTE_TYPES)}
_ENTITY_TYPE = _TYPE_INDEX["entity"]
_BRAND_TYPE = _TYPE_INDEX["brand"]
_MAX_VALUES_PER_TYPE = max(len(values) for values in ATTRIBUTE_VOCABULARY.values())
_TITLE_TYPES = tuple(_TYPE_INDEX[name] for name in TITLE_WORD_ORDER)
_ATTR_VALUE_TYPES = tuple(_TYPE_INDEX[name] for name in ATTR_VALUE_ORDER)
_QUERY_TYPES = tuple(_TYPE_INDEX[name] for name in QUERY_ATTRIBUTE_TYPES)
_VOCABULARY_BY_TYPE = tuple(ATTRIBUTE_VOCABULARY[name] for name in ATTRIBUTE_TYPES)

# _TYPE_ALLOWED[level1_index, type_index] is False for LEVEL1_EXCLUDED_ATTRIBUTES.
_TYPE_ALLOWED = np.ones((_LEVEL1_COUNT, len(ATTRIBUTE_TYPES)), dtype=bool)
for _level1_index, _level1_name in enumerate(CATEGORY_TREE):
    for _excluded in LEVEL1_EXCLUDED_ATTRIBUTES.get(_level1_name, frozenset()):
        _TYPE_ALLOWED[_level1_index, _TYPE_INDEX[_excluded]] = False

# _LEVEL1_BRAND_INDEX[level1_index, :_LEVEL1_BRAND_COUNT[level1_index]] = brand value indices.
_LEVEL1_BRAND_COUNT = np.array([len(LEVEL1_BRANDS[name]) for name in CATEGORY_TREE], dtype=np.int64)
_LEVEL1_BRAND_INDEX = np.zeros((_LEVEL1_COUNT, int(_LEVEL1_BRAND_COUNT.max())), dtype=np.int64)
for _level1_index, _level1_name in enumerate(CATEGORY_TREE):
    for _position, _brand in enumerate(LEVEL1_BRANDS[_level1_name]):
        _LEVEL1_BRAND_INDEX[_level1_index, _position] = ATTRIBUTE_VOCABULARY["brand"].index(_brand)

_LEVEL1_LOG_MEDIAN_PRICE = np.log([LEVEL1_MEDIAN_PRICE_FEN[name] for name in CATEGORY_TREE])


def _zipf_weights(count: int, exponent: float) -> np.ndarray:
    """Return normalised weights 1 / (rank + 1) ** exponent for ranks 0..count - 1."""
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


_LEAF_POPULARITY = _zipf_weights(_LEAF_COUNT, LEAF_ZIPF_EXPONENT)
_QUERY_RANK_POPULARITY = _zipf_weights(MAX_QUERY_RANK, QUERY_ZIPF_EXPONENT)
_AGE_BUCKETS = tuple(AGE_BUCKET_SHARES)
_AGE_BUCKET_PROBABILITIES = np.array(list(AGE_BUCKET_SHARES.values())) / sum(AGE_BUCKET_SHARES.values())
_SEARCH_ENTRANCES = tuple(SEARCH_ENTRANCE_SHARES)
_SEARCH_ENTRANCE_PROBABILITIES = np.array(list(SEARCH_ENTRANCE_SHARES.values()))
_IMPRESSION_SOURCE_PROBABILITIES = np.array(list(IMPRESSION_SOURCE_SHARES.values()))
# Source codes drawn per impression, in IMPRESSION_SOURCE_SHARES order.
_SOURCE_ATTRIBUTE, _SOURCE_LEAF, _SOURCE_LEVEL1, _SOURCE_CATALOG = range(len(IMPRESSION_SOURCE_SHARES))
_SPLIT_TRAIN, _SPLIT_VALID, _SPLIT_TEST = "train", "valid", "test"


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """Raise TypeError unless value is an int, ValueError unless minimum <= value <= maximum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"invalid {name}={value!r}: expected an int >= {minimum}{upper}")


def _check_arguments(
    n_items: int, n_users: int, seed: int, sessions_per_user: int, changed_fraction: float, change_seed: int
) -> None:
    """Raise ValueError (TypeError for a non-number) naming the first invalid argument."""
    _check_int("n_items", n_items, 1)
    _check_int("n_users", n_users, 1)
    _check_int("seed", seed, 0)
    _check_int("sessions_per_user", sessions_per_user, 1, MAX_SESSIONS_PER_USER)
    _check_int("change_seed", change_seed, 0)
    if isinstance(changed_fraction, bool) or not isinstance(changed_fraction, (int, float, np.floating)):
        raise TypeError(f"changed_fraction must be a float, got {changed_fraction!r}")
    if not 0.0 <= changed_fraction < 1.0:
        raise ValueError(f"invalid changed_fraction={changed_fraction!r}: expected 0 <= changed_fraction < 1")


# --------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------


@dataclass
class _ItemTable:
    """Numeric columns of the catalog, row i = item_id FIRST_ITEM_ID + i.

    ``attributes[t, i]`` is the index into ATTRIBUTE_VOCABULARY's t-th type, -1 if absent.
    """

    leaf: np.ndarray
    attributes: np.ndarray
    seller_prefix: np.ndarray
    seller_suffix: np.ndarray
    price: np.ndarray
    show_count: np.ndarray
    click_count: np.ndarray
    order_count: np.ndarray
    changed: np.ndarray
    change_word: np.ndarray

    @property
    def size(self) -> int:
        return int(self.leaf.shape[0])


def _draw_item_block(seed: int, block: int) -> dict[str, np.ndarray]:
    """Draw ITEM_BLOCK_SIZE items from a generator seeded by (seed, block) alone."""
    rng = np.random.default_rng([_ITEM_STREAM, seed, block])
    size = ITEM_BLOCK_SIZE

    leaf = rng.integers(0, _LEAF_COUNT, size)
    level1 = _LEAF_LEVEL1[leaf]
    attributes = np.full((len(ATTRIBUTE_TYPES), size), -1, dtype=np.int16)
    entity_offset = np.floor(rng.random(size) * _LEAF_ENTITY_COUNT[leaf]).astype(np.int64)
    attributes[_ENTITY_TYPE] = _LEAF_FIRST_ENTITY[leaf] + entity_offset
    has_no_brand = rng.random(size) < NO_BRAND_SHARE
    brand_position = np.floor(rng.random(size) * _LEVEL1_BRAND_COUNT[level1]).astype(np.int64)
    attributes[_BRAND_TYPE] = np.where(has_no_brand, NO_BRAND_INDEX, _LEVEL1_BRAND_INDEX[level1, brand_position])
    for type_name, presence in ATTRIBUTE_PRESENCE.items():
        type_index = _TYPE_INDEX[type_name]
        present = (rng.random(size) < presence) & _TYPE_ALLOWED[level1, type_index]
        values = rng.integers(0, len(ATTRIBUTE_VOCABULARY[type_name]), size)
        attributes[type_index] = np.where(present, values, -1)

    seller_prefix = rng.integers(0, len(SELLER_NAME_PREFIXES), size)
    seller_suffix = rng.integers(0, len(SELLER_NAME_SUFFIXES), size)

    raw_price = np.exp(rng.normal(_LEVEL1_LOG_MEDIAN_PRICE[level1], PRICE_LOG_SIGMA))
    price = np.maximum(np.round(raw_price / PRICE_STEP_FEN) * PRICE_STEP_FEN, MIN_PRICE_FEN)

    show_count = np.floor(np.exp(rng.normal(ITEM_SHOW_LOG_MEAN, ITEM_SHOW_LOG_SIGMA, size)))
    click_count = rng.binomial(show_count.astype(np.int64), rng.beta(*ITEM_CTR_BETA, size))
    order_count = rng.binomial(click_count, rng.beta(*ITEM_CVR_BETA, size))

    return {
        "leaf": leaf.astype(np.int16),
        "attributes": attributes,
        "seller_prefix": seller_prefix.astype(np.int16),
        "seller_suffix": seller_suffix.astype(np.int16),
        "price": price,
        "show_count": show_count,
        "click_count": click_count.astype(np.float64),
        "order_count": order_count.astype(np.float64),
    }


def _draw_change_block(change_seed: int, block: int, changed_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw the retitled flags and marketing word indices of one item block from (change_seed, block)."""
    rng = np.random.default_rng([_CHANGE_STREAM, change_seed, block])
    changed = rng.random(ITEM_BLOCK_SIZE) < changed_fraction
    change_word = rng.integers(0, len(ATTRIBUTE_VOCABULARY["marketing"]), ITEM_BLOCK_SIZE)
    return changed, change_word.astype(np.int16)


def _build_item_table(n_items: int, seed: int, changed_fraction: float, change_seed: int) -> _ItemTable:
    """Draw the catalog block by block and truncate the last block to n_items."""
    block_count = -(-n_items // ITEM_BLOCK_SIZE)
    columns: dict[str, list[np.ndarray]] = {}
    for block in range(block_count):
        keep = min(ITEM_BLOCK_SIZE, n_items - block * ITEM_BLOCK_SIZE)
        drawn = _draw_item_block(seed, block)
        changed, change_word = _draw_change_block(change_seed, block, changed_fraction)
        drawn["changed"] = changed
        drawn["change_word"] = change_word
        for name, values in drawn.items():
            columns.setdefault(name, []).append(values[..., :keep])
    return _ItemTable(**{name: np.concatenate(parts, axis=-1) for name, parts in columns.items()})


def _item_title(attribute_row: list[int], changed: bool, change_word: int) -> str:
    words = []
    for type_index in _TITLE_TYPES:
        value = attribute_row[type_index]
        if value < 0 or (type_index == _BRAND_TYPE and value == NO_BRAND_INDEX):
            continue
        words.append(_VOCABULARY_BY_TYPE[type_index][value])
    title = "".join(words)
    if changed:
        title = CHANGED_TITLE_TEMPLATE.format(word=ATTRIBUTE_VOCABULARY["marketing"][change_word], title=title)
    return title


def _attr_value(attribute_row: list[int]) -> str:
    return ",".join(
        _VOCABULARY_BY_TYPE[type_index][attribute_row[type_index]]
        for type_index in _ATTR_VALUE_TYPES
        if attribute_row[type_index] >= 0
    )


def _item_records(items: _ItemTable, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Yield the items.jsonl rows of table rows start..stop - 1, in the public field order."""
    leaves = items.leaf[start:stop].tolist()
    attribute_rows = items.attributes[:, start:stop].T.tolist()
    prefixes = items.seller_prefix[start:stop].tolist()
    suffixes = items.seller_suffix[start:stop].tolist()
    changed = items.changed[start:stop].tolist()
    change_words = items.change_word[start:stop].tolist()
    for offset, attribute_row in enumerate(attribute_rows):
        leaf_index = leaves[offset]
        leaf = _LEAVES[leaf_index]
        brand_index = attribute_row[_BRAND_TYPE]
        first_noun = ATTRIBUTE_VOCABULARY["entity"][leaf.first_entity]
        # Sellers are (prefix, leaf, suffix) combinations, numbered from 1 in that order.
        seller_id = (prefixes[offset] * _LEAF_COUNT + leaf_index) * len(SELLER_NAME_SUFFIXES) + suffixes[offset] + 1
        yield {
            "item_id": FIRST_ITEM_ID + start + offset,
            "item_title": _item_title(attribute_row, changed[offset], change_words[offset]),
            "brand_id": brand_index + 1,
            "brand_name": ATTRIBUTE_VOCABULARY["brand"][brand_index],
            "seller_id": seller_id,
            "seller_name": SELLER_NAME_PREFIXES[prefixes[offset]] + first_noun + SELLER_NAME_SUFFIXES[suffixes[offset]],
            "category_level1_id": leaf.level1_id,
            "category_level1_name": leaf.level1_name,
            "category_level2_id": leaf.level2_id,
            "category_level2_name": leaf.level2_name,
            "category_level3_id": leaf.level3_id,
            "category_level3_name": leaf.level3_name,
            "attr_value": _attr_value(attribute_row),
        }


def _write_items(handle: TextIO, items: _ItemTable) -> int:
    for start in range(0, items.size, ITEM_BLOCK_SIZE):
        stop = min(start + ITEM_BLOCK_SIZE, items.size)
        handle.writelines(_json_line(record) for record in _item_records(items, start, stop))
    return items.size


# --------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------


@dataclass
class _UserTable:
    """Numeric columns of the users, row i = user_id FIRST_USER_ID + i."""

    female: np.ndarray
    age_bucket: np.ndarray
    region: np.ndarray
    fan_count: np.ndarray
    follow_count: np.ndarray
    interest_leaf: np.ndarray
    show_count: np.ndarray
    click_count: np.ndarray
    order_count: np.ndarray
    gmv: np.ndarray

    @property
    def size(self) -> int:
        return int(self.female.shape[0])


def _draw_user_block(seed: int, block: int) -> dict[str, np.ndarray]:
    """Draw USER_BLOCK_SIZE users from a generator seeded by (seed, block) alone."""
    rng = np.random.default_rng([_USER_STREAM, seed, block])
    size = USER_BLOCK_SIZE
    show_count = np.floor(np.exp(rng.normal(USER_SHOW_LOG_MEAN, USER_SHOW_LOG_SIGMA, size)))
    click_count = rng.binomial(show_count.astype(np.int64), rng.beta(*USER_CTR_BETA, size))
    order_count = rng.binomial(click_count, USER_ORDER_PER_CLICK)
    order_value = np.exp(rng.normal(USER_ORDER_VALUE_LOG_MEAN, USER_ORDER_VALUE_LOG_SIGMA, size))
    return {
        "female": rng.random(size) < FEMALE_SHARE,
        "age_bucket": rng.choice(len(_AGE_BUCKETS), size, p=_AGE_BUCKET_PROBABILITIES),
        "region": rng.integers(0, len(USER_REGIONS), size),
        "fan_count": np.floor(np.exp(rng.normal(USER_FAN_LOG_MEAN, USER_SOCIAL_LOG_SIGMA, size))).astype(np.int64),
        "follow_count": np.floor(np.exp(rng.normal(USER_FOLLOW_LOG_MEAN, USER_SOCIAL_LOG_SIGMA, size))).astype(
            np.int64
        ),
        "interest_leaf": rng.choice(_LEAF_COUNT, size, p=_LEAF_POPULARITY),
        "show_count": show_count,
        "click_count": click_count.astype(np.float64),
        "order_count": order_count.astype(np.float64),
        "gmv": np.round(order_count * order_value, 2),
    }


def _build_user_table(n_users: int, seed: int) -> _UserTable:
    block_count = -(-n_users // USER_BLOCK_SIZE)
    columns: dict[str, list[np.ndarray]] = {}
    for block in range(block_count):
        keep = min(USER_BLOCK_SIZE, n_users - block * USER_BLOCK_SIZE)
        for name, values in _draw_user_block(seed, block).items():
            columns.setdefault(name, []).append(values[:keep])
    return _UserTable(**{name: np.concatenate(parts) for name, parts in columns.items()})


def _write_users(handle: TextIO, users: _UserTable) -> int:
    female = users.female.tolist()
    age_bucket = users.age_bucket.tolist()
    region = users.region.tolist()
    for index in range(users.size):
        province, city = USER_REGIONS[region[index]]
        record = {
            "user_id": FIRST_USER_ID + index,
            "gender": "F" if female[index] else "M",
            "age_bucket": _AGE_BUCKETS[age_bucket[index]],
            "fre_country": COUNTRY,
            "fre_province": province,
            "fre_city": city,
        }
        handle.write(_json_line(record))
    return users.size


# --------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Query:
    """A search query: its text, leaf category and the (type index, value index) words it uses."""

    text: str
    leaf: int
    attribute_types: tuple[int, ...]
    attribute_values: tuple[int, ...]


def _build_query(seed: int, leaf_index: int, rank: int) -> _Query:
    """Build the rank-th most popular query of a leaf, from a generator seeded by (seed, leaf, rank)."""
    rng = np.random.default_rng([_QUERY_STREAM, seed, leaf_index, rank])
    leaf = _LEAVES[leaf_index]
    noun = ATTRIBUTE_VOCABULARY["entity"][leaf.first_entity + int(rng.integers(0, leaf.entity_count))]
    allowed = [type_index for type_index in _QUERY_TYPES if _TYPE_ALLOWED[leaf.level1_index, type_index]]
    word_count = min(int(rng.integers(QUERY_MIN_ATTRIBUTES, QUERY_MAX_ATTRIBUTES + 1)), len(allowed))
    chosen = sorted(rng.choice(allowed, word_count, replace=False).tolist(), key=_QUERY_TYPES.index)

    types, values, prefix_words, suffix_words = [], [], [], []
    for type_index in chosen:
        vocabulary = _VOCABULARY_BY_TYPE[type_index]
        if type_index == _BRAND_TYPE:
            brand_position = int(rng.integers(0, _LEVEL1_BRAND_COUNT[leaf.level1_index]))
            value = int(_LEVEL1_BRAND_INDEX[leaf.level1_index, brand_position])
        else:
            value = int(rng.integers(0, len(vocabulary)))
        types.append(type_index)
        values.append(value)
        if ATTRIBUTE_TYPES[type_index] in QUERY_SUFFIX_TYPES:
            suffix_words.append(vocabulary[value])
        else:
            prefix_words.append(vocabulary[value])
    return _Query(
        text="".join(prefix_words) + noun + "".join(suffix_words),
        leaf=leaf_index,
        attribute_types=tuple(types),
        attribute_values=tuple(values),
    )


class _QueryCatalog:
    """Queries by (leaf, rank), built on first use. Each depends only on (seed, leaf, rank)."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._queries: dict[tuple[int, int], _Query] = {}

    def get(self, leaf_index: int, rank: int) -> _Query:
        key = (leaf_index, rank)
        query = self._queries.get(key)
        if query is None:
            query = _build_query(self._seed, leaf_index, rank)
            self._queries[key] = query
        return query


def _shared_attribute_count(query: _Query, attribute_row: np.ndarray) -> int:
    """Count the query's attribute words that the item has (attribute_row = one column of the table)."""
    return sum(
        int(attribute_row[type_index] == value)
        for type_index, value in zip(query.attribute_types, query.attribute_values)
    )


def _relevance_score(query: _Query, items: _ItemTable, row: int) -> int:
    item_leaf = int(items.leaf[row])
    if item_leaf == query.leaf:
        return 3 if _shared_attribute_count(query, items.attributes[:, row]) > 0 else 2
    if _LEAF_LEVEL1[item_leaf] == _LEAF_LEVEL1[query.leaf]:
        return 1
    return 0


# --------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------


@dataclass
class _ImpressionPools:
    """Item rows grouped by leaf, by level-1 category and by (query type, leaf, value), for sampling."""

    by_leaf: np.ndarray
    leaf_start: np.ndarray
    leaf_count: np.ndarray
    by_level1: np.ndarray
    level1_start: np.ndarray
    level1_count: np.ndarray
    attribute_keys: np.ndarray
    by_attribute: np.ndarray


def _attribute_key(type_index: np.ndarray, leaf: np.ndarray, value: np.ndarray) -> np.ndarray:
    return (type_index.astype(np.int64) * _LEAF_COUNT + leaf) * _MAX_VALUES_PER_TYPE + value


def _build_impression_pools(items: _ItemTable) -> _ImpressionPools:
    leaf = items.leaf.astype(np.int64)
    level1 = _LEAF_LEVEL1[leaf]
    by_leaf = np.argsort(leaf, kind="stable")
    by_level1 = np.argsort(level1, kind="stable")

    keys, rows = [], []
    for type_index in _QUERY_TYPES:
        present = np.flatnonzero(items.attributes[type_index] >= 0)
        type_column = np.full(present.shape[0], type_index)
        keys.append(_attribute_key(type_column, leaf[present], items.attributes[type_index, present]))
        rows.append(present)
    all_keys = np.concatenate(keys)
    order = np.argsort(all_keys, kind="stable")
    return _ImpressionPools(
        by_leaf=by_leaf,
        leaf_start=np.searchsorted(leaf[by_leaf], np.arange(_LEAF_COUNT)),
        leaf_count=np.bincount(leaf, minlength=_LEAF_COUNT),
        by_level1=by_level1,
        level1_start=np.searchsorted(level1[by_level1], np.arange(_LEVEL1_COUNT)),
        level1_count=np.bincount(level1, minlength=_LEVEL1_COUNT),
        attribute_keys=all_keys[order],
        by_attribute=np.concatenate(rows)[order],
    )


def _pick_from_pool(pool: np.ndarray, start: np.ndarray, count: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Pick pool[start + floor(uniform * count)] per entry. Entries with count 0 get -1."""
    position = np.minimum(start + np.floor(uniform * count).astype(np.int64), pool.shape[0] - 1)
    return np.where(count > 0, pool[position], -1)


@dataclass
class _SessionBlock:
    """Sessions of one user block. Slot arrays hold the impressions, grouped by session in display order."""

    user_row: np.ndarray
    session_id: np.ndarray
    time_index: np.ndarray
    search_entrance: np.ndarray
    queries: list[_Query]
    random_catalog_row: np.ndarray
    slot_start: np.ndarray
    slot_row: np.ndarray
    slot_clicked: np.ndarray
    slot_purchased: np.ndarray
    slot_sample_key: np.ndarray


def _split_name(time_index: int) -> str:
    if time_index >= TEST_START_SHARE * TIME_INDEX_HORIZON:
        return _SPLIT_TEST
    if time_index >= VALID_START_SHARE * TIME_INDEX_HORIZON:
        return _SPLIT_VALID
    return _SPLIT_TRAIN


def _draw_session_block(
    seed: int,
    block: int,
    user_rows: np.ndarray,
    users: _UserTable,
    items: _ItemTable,
    pools: _ImpressionPools,
    sessions_per_user: int,
    query_catalog: _QueryCatalog,
) -> _SessionBlock:
    """Draw the sessions of one user block: queries, impressions, clicks and purchases."""
    rng = np.random.default_rng([_SESSION_STREAM, seed, block])
    user_count = user_rows.shape[0]
    session_count = user_count * sessions_per_user
    session_user = np.repeat(user_rows, sessions_per_user)

    # Strictly increasing times per user: sorted draws from a shortened range plus 0, 1, 2, ...
    draws = rng.integers(0, TIME_INDEX_HORIZON - sessions_per_user, (user_count, sessions_per_user))
    time_index = (np.sort(draws, axis=1) + np.arange(sessions_per_user)).ravel()

    sticks = rng.random(session_count) < INTEREST_LEAF_PROBABILITY
    other_leaf = rng.choice(_LEAF_COUNT, session_count, p=_LEAF_POPULARITY)
    session_leaf = np.where(sticks, users.interest_leaf[session_user], other_leaf)
    query_rank = rng.choice(MAX_QUERY_RANK, session_count, p=_QUERY_RANK_POPULARITY)
    queries = [query_catalog.get(leaf, rank) for leaf, rank in zip(session_leaf.tolist(), query_rank.tolist())]
    search_entrance = rng.choice(len(_SEARCH_ENTRANCES), session_count, p=_SEARCH_ENTRANCE_PROBABILITIES)
    random_catalog_row = rng.integers(0, items.size, session_count)

    # Query words as (session, word) arrays, -1 where a query has fewer words.
    query_types = np.full((session_count, QUERY_MAX_ATTRIBUTES), -1, dtype=np.int64)
    query_values = np.full((session_count, QUERY_MAX_ATTRIBUTES), -1, dtype=np.int64)
    for session, query in enumerate(queries):
        word_count = len(query.attribute_types)
        query_types[session, :word_count] = query.attribute_types
        query_values[session, :word_count] = query.attribute_values
    query_word_count = (query_types >= 0).sum(axis=1)

    # Impression slots: a source per slot, and one uniform number that picks within the pool.
    slots_per_session = rng.integers(MIN_IMPRESSIONS, MAX_IMPRESSIONS + 1, session_count)
    slot_session = np.repeat(np.arange(session_count), slots_per_session)
    slot_count = slot_session.shape[0]
    source = rng.choice(len(_IMPRESSION_SOURCE_PROBABILITIES), slot_count, p=_IMPRESSION_SOURCE_PROBABILITIES)
    uniform = rng.random(slot_count)
    word = np.floor(rng.random(slot_count) * query_word_count[slot_session]).astype(np.int64)

    leaf = session_leaf[slot_session]
    level1 = _LEAF_LEVEL1[leaf]
    key = _attribute_key(query_types[slot_session, word], leaf, query_values[slot_session, word])
    key_start = np.searchsorted(pools.attribute_keys, key, side="left")
    key_count = np.searchsorted(pools.attribute_keys, key, side="right") - key_start
    from_attribute = _pick_from_pool(pools.by_attribute, key_start, key_count, uniform)
    from_leaf = _pick_from_pool(pools.by_leaf, pools.leaf_start[leaf], pools.leaf_count[leaf], uniform)
    from_level1 = _pick_from_pool(pools.by_level1, pools.level1_start[level1], pools.level1_count[level1], uniform)
    from_catalog = np.floor(uniform * items.size).astype(np.int64)

    # A slot takes the pick of its source, or of the next wider pool where that one is
    # empty (attribute, leaf, level 1, catalog). The catalog is never empty.
    row = from_catalog
    row = np.where((source <= _SOURCE_LEVEL1) & (from_level1 >= 0), from_level1, row)
    row = np.where((source <= _SOURCE_LEAF) & (from_leaf >= 0), from_leaf, row)
    row = np.where((source == _SOURCE_ATTRIBUTE) & (from_attribute >= 0), from_attribute, row)

    # Drop repeats of an item within a session, keeping its first position.
    order = np.lexsort((np.arange(slot_count), row, slot_session))
    repeat = np.zeros(slot_count, dtype=bool)
    repeat[order[1:]] = (slot_session[order[1:]] == slot_session[order[:-1]]) & (row[order[1:]] == row[order[:-1]])
    keep = ~repeat
    slot_session, row = slot_session[keep], row[keep]
    kept_per_session = np.bincount(slot_session, minlength=session_count)
    slot_start = np.concatenate(([0], np.cumsum(kept_per_session)))
    position = np.arange(slot_session.shape[0]) - slot_start[slot_session]

    # Clicks favour the query's leaf, its level-1 category and shared attribute values.
    item_leaf = items.leaf[row].astype(np.int64)
    same_leaf = item_leaf == session_leaf[slot_session]
    same_level1 = _LEAF_LEVEL1[item_leaf] == _LEAF_LEVEL1[session_leaf[slot_session]]
    shared = np.zeros(row.shape[0], dtype=np.int64)
    for word_index in range(QUERY_MAX_ATTRIBUTES):
        word_type = query_types[slot_session, word_index]
        item_value = items.attributes[np.maximum(word_type, 0), row]
        shared += (word_type >= 0) & (item_value == query_values[slot_session, word_index])
    base = np.where(same_leaf, CLICK_BASE_SAME_LEAF, np.where(same_level1, CLICK_BASE_SAME_LEVEL1, CLICK_BASE_OTHER))
    click_probability = np.minimum(
        (base + CLICK_BONUS_PER_SHARED_ATTRIBUTE * shared) / np.log2(position + 2), MAX_CLICK_PROBABILITY
    )
    clicked = rng.random(row.shape[0]) < click_probability
    purchased = clicked & (rng.random(row.shape[0]) < PURCHASE_PROBABILITY_PER_CLICK)

    return _SessionBlock(
        user_row=session_user,
        session_id=FIRST_SESSION_ID + session_user * sessions_per_user + np.tile(np.arange(sessions_per_user), user_count),
        time_index=time_index,
        search_entrance=search_entrance,
        queries=queries,
        random_catalog_row=random_catalog_row,
        slot_start=slot_start,
        slot_row=row,
        slot_clicked=clicked,
        slot_purchased=purchased,
        slot_sample_key=rng.random(row.shape[0]),
    )


@dataclass
class _Session:
    """One session of a _SessionBlock as Python values: impressions in display order."""

    user_row: int
    session_id: int
    time_index: int
    split: str
    search_entrance: str
    query: _Query
    item_rows: list[int]
    clicked: list[bool]
    purchased: list[bool]
    sample_keys: list[float]
    random_catalog_row: int

    @property
    def item_ids(self) -> list[int]:
        return [FIRST_ITEM_ID + row for row in self.item_rows]

    def positions(self, flags: list[bool]) -> list[int]:
        return [position for position, flag in enumerate(flags) if flag]


def _iter_sessions(session_block: _SessionBlock) -> Iterator[_Session]:
    """Yield the sessions of a block in file order (user by user, time ascending)."""
    slot_rows = session_block.slot_row.tolist()
    slot_clicked = session_block.slot_clicked.tolist()
    slot_purchased = session_block.slot_purchased.tolist()
    slot_keys = session_block.slot_sample_key.tolist()
    slot_start = session_block.slot_start.tolist()
    user_rows = session_block.user_row.tolist()
    session_ids = session_block.session_id.tolist()
    time_indices = session_block.time_index.tolist()
    entrances = session_block.search_entrance.tolist()
    random_rows = session_block.random_catalog_row.tolist()
    for session, query in enumerate(session_block.queries):
        first, last = slot_start[session], slot_start[session + 1]
        yield _Session(
            user_row=user_rows[session],
            session_id=session_ids[session],
            time_index=time_indices[session],
            split=_split_name(time_indices[session]),
            search_entrance=_SEARCH_ENTRANCES[entrances[session]],
            query=query,
            item_rows=slot_rows[first:last],
            clicked=slot_clicked[first:last],
            purchased=slot_purchased[first:last],
            sample_keys=slot_keys[first:last],
            random_catalog_row=random_rows[session],
        )


@dataclass
class _UserState:
    """A user's history and 30-day counts before the session being written."""

    clicked_ids: list[int]
    purchased_ids: list[int]
    show_count: float
    click_count: float
    order_count: float
    gmv: float

    @classmethod
    def before_first_session(cls, users: _UserTable, user_row: int) -> _UserState:
        return cls(
            clicked_ids=[],
            purchased_ids=[],
            show_count=float(users.show_count[user_row]),
            click_count=float(users.click_count[user_row]),
            order_count=float(users.order_count[user_row]),
            gmv=float(users.gmv[user_row]),
        )

    def add_session(self, session: _Session, items: _ItemTable) -> None:
        item_ids = session.item_ids
        clicked = session.positions(session.clicked)
        purchased = session.positions(session.purchased)
        self.clicked_ids.extend(item_ids[position] for position in clicked)
        self.purchased_ids.extend(item_ids[position] for position in purchased)
        self.show_count += len(item_ids)
        self.click_count += len(clicked)
        self.order_count += len(purchased)
        self.gmv += sum(float(items.price[session.item_rows[position]]) for position in purchased)


def _recall_record(session: _Session) -> dict[str, Any]:
    item_ids = session.item_ids
    return {
        "user_id": FIRST_USER_ID + session.user_row,
        "session_id": session.session_id,
        "impressed_item_ids": item_ids,
        "clicked_item_ids": [item_ids[position] for position in session.positions(session.clicked)],
        "purchased_item_ids": [item_ids[position] for position in session.positions(session.purchased)],
        "time_index": session.time_index,
        "query": session.query.text,
        "split": session.split,
    }


def _rank_records(session: _Session, state: _UserState, users: _UserTable, items: _ItemTable) -> list[dict[str, Any]]:
    """Build rank rows for the first clicked impressions and a random sample of unclicked ones."""
    unclicked = [position for position, flag in enumerate(session.clicked) if not flag]
    unclicked.sort(key=session.sample_keys.__getitem__)
    clicked = session.positions(session.clicked)[:RANK_MAX_CLICKED_PER_SESSION]
    targets = sorted(clicked + unclicked[:RANK_UNCLICKED_PER_SESSION])

    user_row = session.user_row
    fan_number = int(users.fan_count[user_row])
    follow_number = int(users.follow_count[user_row])
    recently_clicked = state.clicked_ids[-HISTORY_LENGTH:]
    recently_purchased = state.purchased_ids[-HISTORY_LENGTH:]
    user_statistics = {
        "user_show_cnt_30d_hist": state.show_count,
        "user_click_cnt_30d_hist": state.click_count,
        "user_order_cnt_30d_hist": state.order_count,
        "user_gmv_30d_hist": round(state.gmv, 2),
    }
    records = []
    for position in targets:
        item_row = session.item_rows[position]
        records.append(
            {
                "user_id": FIRST_USER_ID + user_row,
                "session_id": session.session_id,
                "user_fan_number": fan_number,
                "user_follow_number": follow_number,
                "time_index": session.time_index,
                "search_entrance": session.search_entrance,
                "recently_clicked_item_ids": recently_clicked,
                "recently_purchased_item_ids": recently_purchased,
                "query": session.query.text,
                "target_item_id": FIRST_ITEM_ID + item_row,
                "target_item_price": float(items.price[item_row]),
                "is_clicked": int(session.clicked[position]),
                "is_purchased": int(session.purchased[position]),
                "user_statistical_features": user_statistics,
                "target_item_statistical_features": {
                    "item_show_cnt_30d_hist": float(items.show_count[item_row]),
                    "item_click_cnt_30d_hist": float(items.click_count[item_row]),
                    "item_order_cnt_30d_hist": float(items.order_count[item_row]),
                },
                "split": session.split,
            }
        )
    return records


def _relevance_records(session: _Session, items: _ItemTable) -> list[dict[str, Any]]:
    """Label a random sample of the session's impressions and one random catalog item."""
    sampled = sorted(range(len(session.item_rows)), key=session.sample_keys.__getitem__)
    item_rows = [session.item_rows[position] for position in sampled[:RELEVANCE_IMPRESSED_PER_QUERY]]
    if session.random_catalog_row not in item_rows:
        item_rows.append(session.random_catalog_row)

    records = []
    for item_row in item_rows:
        item = next(_item_records(items, item_row, item_row + 1))
        records.append(
            {
                "query": session.query.text,
                "item_title": item["item_title"],
                "brand": item["brand_name"],
                "seller_name": item["seller_name"],
                "attr_value": item["attr_value"],
                "score": _relevance_score(session.query, items, item_row),
                "item_id": item["item_id"],
            }
        )
    return records


def _write_session_block(
    session_block: _SessionBlock,
    users: _UserTable,
    items: _ItemTable,
    handles: dict[str, TextIO],
    labelled_queries: set[str],
    row_counts: dict[str, int],
) -> None:
    """Write one block's recall, rank and relevance rows, updating labelled_queries and row_counts.

    Only the first session of a query text, over all blocks so far, writes relevance rows.
    """
    current_user = -1
    state: _UserState | None = None
    for session in _iter_sessions(session_block):
        if session.user_row != current_user or state is None:
            current_user = session.user_row
            state = _UserState.before_first_session(users, current_user)

        handles["recall.jsonl"].write(_json_line(_recall_record(session)))
        row_counts["recall.jsonl"] += 1

        rank_records = _rank_records(session, state, users, items)
        handles["rank.jsonl"].writelines(_json_line(record) for record in rank_records)
        row_counts["rank.jsonl"] += len(rank_records)

        if session.query.text not in labelled_queries:
            labelled_queries.add(session.query.text)
            relevance_records = _relevance_records(session, items)
            handles["relevance.jsonl"].writelines(_json_line(record) for record in relevance_records)
            row_counts["relevance.jsonl"] += len(relevance_records)

        state.add_session(session, items)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _open_output(path: Path) -> TextIO:
    return path.open("w", encoding="utf-8", newline="\n")


def generate_demo_data(
    out_dir: Path,
    n_items: int,
    n_users: int,
    seed: int = 0,
    *,
    sessions_per_user: int = 4,
    changed_fraction: float = 0.0,
    change_seed: int = 1,
) -> dict[str, int]:
    """Write items, users, recall, rank and relevance JSONL files with joinable ids into out_dir.

    The module docstring describes each file. out_dir is created if missing and existing
    files of those names are overwritten. Arguments: ``n_items`` >= 1 catalog items,
    ``n_users`` >= 1 users with ``sessions_per_user`` (1..MAX_SESSIONS_PER_USER) search
    sessions each, ``seed`` >= 0 for everything, and ``change_seed`` >= 0 choosing which
    share ``changed_fraction`` (0 <= f < 1) of items get a changed title.

    Returns the number of rows written per file name. Raises ValueError naming an
    argument out of range, TypeError for an argument of the wrong type.
    """
    _check_arguments(n_items, n_users, seed, sessions_per_user, changed_fraction, change_seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    row_counts = dict.fromkeys(FILE_NAMES, 0)

    items = _build_item_table(n_items, seed, changed_fraction, change_seed)
    with _open_output(out_dir / "items.jsonl") as handle:
        row_counts["items.jsonl"] = _write_items(handle, items)
    logger.info("wrote %d rows to %s", row_counts["items.jsonl"], out_dir / "items.jsonl")

    users = _build_user_table(n_users, seed)
    with _open_output(out_dir / "users.jsonl") as handle:
        row_counts["users.jsonl"] = _write_users(handle, users)
    logger.info("wrote %d rows to %s", row_counts["users.jsonl"], out_dir / "users.jsonl")

    pools = _build_impression_pools(items)
    query_catalog = _QueryCatalog(seed)
    labelled_queries: set[str] = set()
    session_files = ("recall.jsonl", "rank.jsonl", "relevance.jsonl")
    handles = {name: _open_output(out_dir / name) for name in session_files}
    try:
        for block, start in enumerate(range(0, n_users, USER_BLOCK_SIZE)):
            user_rows = np.arange(start, min(start + USER_BLOCK_SIZE, n_users))
            session_block = _draw_session_block(
                seed, block, user_rows, users, items, pools, sessions_per_user, query_catalog
            )
            _write_session_block(session_block, users, items, handles, labelled_queries, row_counts)
    finally:
        for handle in handles.values():
            handle.close()
    for name in session_files:
        logger.info("wrote %d rows to %s", row_counts[name], out_dir / name)
    return row_counts
