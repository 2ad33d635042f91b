"""SFT examples of the three stages and the self-distillation (SDFT) pairs.

Each builder yields candidates and either emits an example or drops the candidate with a
reason, so for every task: candidates = emitted + dropped.

Stage 1 (semantic alignment): query/item <-> SID, item/query/item-SID -> category,
query -> keywords, query SID -> keyword SID, and the personalized keyword tasks.
Stage 2 (query-item co-occurrence): query <-> clicked or bought item, as text and as SIDs.
Relevance labels at or above `min_pair_relevance` count as pairs too.
Stage 3 (personalization): query + query SID + user profile + recent queries + recent item
SIDs -> SID of a clicked or bought item. SDFT pairs add the target item's keywords to the
stage-3 input (teacher) and keep the plain input (student).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from onesearch_tasks.config import TrainingDataConfig
from onesearch_tasks.data.inputs import TrainingInputs
from onesearch_tasks.data.sessions import Session
from onesearch_tasks.data.templates import TemplateSet

STAGE_OF_TASK: dict[str, int] = {
    "query_to_sid": 1, "sid_to_query": 1, "item_to_sid": 1, "sid_to_item": 1,
    "item_to_category": 1, "query_to_category": 1, "item_sid_to_category": 1,
    "query_to_keywords": 1, "query_sid_to_keyword_sid": 1,
    "personalized_keywords": 1, "personalized_keyword_sid": 1,
    "query_to_item": 2, "item_to_query": 2, "query_sid_to_item_sid": 2, "item_sid_to_query_sid": 2,
    "personalized_item_sid": 3,
}

# Drop reasons.
QUERY_WITHOUT_SID = "query without SID"
ITEM_WITHOUT_SID = "item without SID"
UNKNOWN_ITEM = "unknown item id"
ITEM_WITHOUT_CATEGORY = "item without category"
QUERY_WITHOUT_CLICKS = "query without clicks"
CLICKS_WITHOUT_CATEGORY = "clicked items without category"
NO_KEYWORDS = "no keywords"
NO_KEYWORD_SID = "no keyword with a SID"
NO_POSITIVE = "session without clicked or purchased item"
EMPTY_HISTORY = "empty history"
ITEM_WITHOUT_KEYWORDS = "target item without keywords"


@dataclass
class Example:
    """One rendered example: the alpaca record plus the key that decides its split."""

    split_key: str
    record: dict[str, str]


@dataclass
class TaskOutput:
    """Examples of one task, the candidates it saw and why the rest were dropped."""

    name: str
    examples: list[Example] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    candidates: int = 0

    def drop(self, reason: str) -> None:
        self.candidates += 1
        self.dropped[reason] += 1

    def emit(self, split_key: str, record: dict[str, str]) -> None:
        self.candidates += 1
        self.examples.append(Example(split_key, record))


class SFTBuilder:
    """Builds every SFT task and the SDFT pairs from one set of inputs."""

    def __init__(self, inputs: TrainingInputs, sessions: list[Session], templates: TemplateSet, config: TrainingDataConfig) -> None:
        self.inputs = inputs
        self.sessions = sessions
        self.templates = templates
        self.config = config
        self.item_titles = _item_titles(inputs)
        self.categories = {str(row.item_id): row.category_path for row in inputs.items.itertuples(index=False) if row.category_path}
        self.sdft_pattern = re.compile(config.sdft_keyword_pattern or templates.sdft_keyword_pattern)
        self.profiles = {str(row.user_id): (row.gender, row.age_bucket) for row in inputs.users.itertuples(index=False)}

    def _render(self, task: str, values: dict[str, str]) -> dict[str, str]:
        return self.templates.task(task).render(values)

    # --- stage 1 -------------------------------------------------------------------------------

    def query_sid_tasks(self) -> list[TaskOutput]:
        forward, backward = TaskOutput("query_to_sid"), TaskOutput("sid_to_query")
        for query, sid in sorted(self.inputs.query_sids.items()):
            values = {"query": query, "query_sid": sid}
            forward.emit(f"query:{query}", self._render("query_to_sid", values))
            backward.emit(f"query:{query}", self._render("sid_to_query", values))
        return [forward, backward]

    def item_sid_tasks(self) -> list[TaskOutput]:
        outputs = {name: TaskOutput(name) for name in ("item_to_sid", "sid_to_item", "item_to_category", "item_sid_to_category")}
        for item_id, sid in sorted(self.inputs.item_sids.items()):
            title = self.item_titles.get(item_id, "")
            values = {"item_title": title, "item_sid": sid}
            outputs["item_to_sid"].emit(f"item:{item_id}", self._render("item_to_sid", values))
            outputs["sid_to_item"].emit(f"item:{item_id}", self._render("sid_to_item", values))
            category = self.categories.get(item_id)
            for name in ("item_to_category", "item_sid_to_category"):
                if category:
                    outputs[name].emit(f"item:{item_id}", self._render(name, {**values, "category": category}))
                else:
                    outputs[name].drop(ITEM_WITHOUT_CATEGORY)
        return list(outputs.values())

    def query_category_task(self) -> TaskOutput:
        """Majority category of the items clicked or bought after each query of the day."""
        output = TaskOutput("query_to_category")
        votes: dict[str, Counter] = defaultdict(Counter)
        positives: dict[str, int] = Counter()
        clicked_by_query: dict[str, list[str]] = defaultdict(list)
        queries = sorted({session.query for session in self.sessions if session.query})
        for session in self.sessions:
            for item_id in session.positives:
                positives[session.query] += 1
                clicked_by_query[session.query].append(item_id)
                category = self.categories.get(item_id)
                if category:
                    votes[session.query][category] += 1
        for query in queries:
            if not positives[query]:
                output.drop(QUERY_WITHOUT_CLICKS)
                continue
            if not votes[query]:
                known = any(item in self.item_titles for item in clicked_by_query[query])
                output.drop(CLICKS_WITHOUT_CATEGORY if known else UNKNOWN_ITEM)
                continue
            category = min(votes[query].items(), key=lambda item: (-item[1], item[0]))[0]
            output.emit(f"query:{query}", self._render("query_to_category", {"query": query, "query_sid": self.inputs.query_sids.get(query, ""), "category": category}))
        return output

    def query_keywords(self, query: str, clicked_items: list[str]) -> list[str]:
        """List the query's own keywords, then its clicked items' keywords by frequency."""
        own = list(self.inputs.query_keywords.get(query, []))
        counts: Counter = Counter()
        for item_id in clicked_items:
            counts.update(dict.fromkeys(self.inputs.item_keywords.get(item_id, []), 1))
        ranked = [keyword for keyword, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
        return list(dict.fromkeys(own + ranked))[: self.config.max_query_keywords]

    def keyword_tasks(self) -> list[TaskOutput]:
        text_task, sid_task = TaskOutput("query_to_keywords"), TaskOutput("query_sid_to_keyword_sid")
        clicked_by_query: dict[str, list[str]] = defaultdict(list)
        for session in self.sessions:
            clicked_by_query[session.query].extend(session.positives)
        for query, query_sid in sorted(self.inputs.query_sids.items()):
            keywords = self.query_keywords(query, clicked_by_query.get(query, []))
            if not keywords:
                text_task.drop(NO_KEYWORDS)
                sid_task.drop(NO_KEYWORDS)
                continue
            values = {"query": query, "query_sid": query_sid, "keywords": self.templates.join_keywords(keywords)}
            text_task.emit(f"query:{query}", self._render("query_to_keywords", values))
            with_sid = [keyword for keyword in keywords if keyword in self.inputs.keyword_sids]
            if not with_sid:
                sid_task.drop(NO_KEYWORD_SID)
                continue
            sid_task.emit(f"query:{query}", self._render("query_sid_to_keyword_sid", {**values, "keyword": with_sid[0], "keyword_sid": self.inputs.keyword_sids[with_sid[0]]}))
        return [text_task, sid_task]

    def context_values(self, session: Session) -> dict[str, str]:
        """Profile, recent queries and recent item SIDs shown with a session."""
        gender, age = self.profiles.get(session.user_id, (None, None))
        recent_sids = [self.inputs.item_sids[item] for item in session.recent_items if item in self.inputs.item_sids]
        return {
            "profile": self.templates.profile(gender, age),
            "recent_queries": self.templates.join_queries(session.recent_queries),
            "recent_item_sids": self.templates.join_sids(recent_sids),
        }

    def personalized_keyword_tasks(self) -> list[TaskOutput]:
        text_task, sid_task = TaskOutput("personalized_keywords"), TaskOutput("personalized_keyword_sid")
        for session in self.sessions:
            positives = [item for item in session.positives if item in self.inputs.item_sids]
            if not positives:
                reason = UNKNOWN_ITEM if session.positives else NO_POSITIVE
                text_task.drop(reason)
                sid_task.drop(reason)
                continue
            counts: Counter = Counter()
            for item_id in positives:
                counts.update(dict.fromkeys(self.inputs.item_keywords.get(item_id, []), 1))
            keywords = [keyword for keyword, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))][: self.config.max_personal_keywords]
            if not keywords:
                text_task.drop(NO_KEYWORDS)
                sid_task.drop(NO_KEYWORDS)
                continue
            values = {"query": session.query, "query_sid": self.inputs.query_sids.get(session.query, ""), "keywords": self.templates.join_keywords(keywords), **self.context_values(session)}
            text_task.emit(session.split_key, self._render("personalized_keywords", values))
            if session.query not in self.inputs.query_sids:
                sid_task.drop(QUERY_WITHOUT_SID)
                continue
            with_sid = [keyword for keyword in keywords if keyword in self.inputs.keyword_sids]
            if not with_sid:
                sid_task.drop(NO_KEYWORD_SID)
                continue
            sid_task.emit(session.split_key, self._render("personalized_keyword_sid", {**values, "keyword": with_sid[0], "keyword_sid": self.inputs.keyword_sids[with_sid[0]]}))
        return [text_task, sid_task]

    # --- stage 2 ----------------------------------------------------------------------------------

    def pair_tasks(self) -> list[TaskOutput]:
        """Query-item pairs from clicks, purchases and high relevance labels, each pair once."""
        pairs: set[tuple[str, str]] = set()
        for session in self.sessions:
            pairs.update((session.query, item_id) for item_id in session.positives if session.query)
        labelled = self.inputs.relevance[self.inputs.relevance["score"] >= self.config.min_pair_relevance]
        pairs.update((str(query), str(item_id)) for query, item_id in zip(labelled["query"], labelled["item_id"]) if query)

        outputs = {name: TaskOutput(name) for name in ("query_to_item", "item_to_query", "query_sid_to_item_sid", "item_sid_to_query_sid")}
        for query, item_id in sorted(pairs):
            title = self.item_titles.get(item_id)
            if title is None:
                for output in outputs.values():
                    output.drop(UNKNOWN_ITEM)
                continue
            values = {"query": query, "item_title": title, "query_sid": self.inputs.query_sids.get(query, ""), "item_sid": self.inputs.item_sids.get(item_id, "")}
            outputs["query_to_item"].emit(f"query:{query}", self._render("query_to_item", values))
            outputs["item_to_query"].emit(f"query:{query}", self._render("item_to_query", values))
            for name in ("query_sid_to_item_sid", "item_sid_to_query_sid"):
                if not values["query_sid"]:
                    outputs[name].drop(QUERY_WITHOUT_SID)
                elif not values["item_sid"]:
                    outputs[name].drop(ITEM_WITHOUT_SID)
                else:
                    outputs[name].emit(f"query:{query}", self._render(name, values))
        return list(outputs.values())

    # --- stage 3 and SDFT ------------------------------------------------------------------------------

    def personalization_tasks(self) -> list[TaskOutput]:
        """Stage-3 examples and their SDFT pairs (teacher input with the keyword span)."""
        stage3, sdft = TaskOutput("personalized_item_sid"), TaskOutput("sdft_personalized_item_sid")
        for session in self.sessions:
            for item_id in session.positives:
                reason = self._stage3_problem(session, item_id)
                if reason:
                    stage3.drop(reason)
                    sdft.drop(reason)
                    continue
                values = {
                    "query": session.query,
                    "query_sid": self.inputs.query_sids[session.query],
                    "item_title": self.item_titles[item_id],
                    "item_sid": self.inputs.item_sids[item_id],
                    "keyword_span": "",
                    **self.context_values(session),
                }
                student = self._render("personalized_item_sid", values)
                stage3.emit(session.split_key, student)
                keywords = self.inputs.item_keywords.get(item_id, [])[: self.config.max_personal_keywords]
                if not keywords:
                    sdft.drop(ITEM_WITHOUT_KEYWORDS)
                    continue
                teacher = self._render("personalized_item_sid", {**values, "keyword_span": self.templates.keyword_span(keywords)})
                self._check_span_removal(teacher["input"], student["input"])
                sdft.emit(session.split_key, {"instruction": teacher["instruction"], "input": teacher["input"], "student_input": student["input"], "output": teacher["output"]})
        return [stage3, sdft]

    def _stage3_problem(self, session: Session, item_id: str) -> str | None:
        if session.query not in self.inputs.query_sids:
            return QUERY_WITHOUT_SID
        if item_id not in self.item_titles:
            return UNKNOWN_ITEM
        if item_id not in self.inputs.item_sids:
            return ITEM_WITHOUT_SID
        known_history = [item for item in session.recent_items if item in self.inputs.item_sids]
        if not session.recent_queries and not known_history:
            return EMPTY_HISTORY
        return None

    def _check_span_removal(self, teacher: str, student: str) -> None:
        stripped = self.sdft_pattern.sub("", teacher, count=1)
        if stripped != student:
            raise ValueError(
                f"sdft_keyword_pattern {self.sdft_pattern.pattern!r} does not turn the teacher input into the "
                f"student input (got {stripped!r}, expected {student!r}); fix the pattern or the keyword_span fragment"
            )

    def build_all(self) -> list[TaskOutput]:
        return [
            *self.query_sid_tasks(),
            *self.item_sid_tasks(),
            self.query_category_task(),
            *self.keyword_tasks(),
            *self.personalized_keyword_tasks(),
            *self.pair_tasks(),
            *self.personalization_tasks(),
        ]


def _item_titles(inputs: TrainingInputs) -> dict[str, str]:
    """Item id -> title: the SID table's text, then the day's catalog titles for other items."""
    titles = dict(inputs.item_texts)
    for row in inputs.items.itertuples(index=False):
        if row.item_title and str(row.item_id) not in titles:
            titles[str(row.item_id)] = row.item_title
    return titles
