"""RL data: GRPO prompts with graded candidates, and listwise DPO lists.

Both use one row per search session (query + user context), with the stage-3 student
prompt (instruction and input, no target) as `prompt`.

Item score for ordering: 4 if purchased, else 3 if clicked, else 0, plus the smoothed CTR
(in [0, 1]) plus relevance tier / 3 (in [0, 1]). A purchase therefore always outranks a
click, and CTR and relevance only order items of the same base.
"""

from __future__ import annotations

from dataclasses import dataclass

from onesearch_tasks.config import TrainingDataConfig
from onesearch_tasks.data.sessions import Session, item_statistics, user_token
from onesearch_tasks.data.sft import NO_POSITIVE, QUERY_WITHOUT_SID, UNKNOWN_ITEM, SFTBuilder, TaskOutput

PURCHASE_BASE = 4.0
CLICK_BASE = 3.0
MAX_RELEVANCE = 3
NO_NEGATIVES = "session without negatives"


@dataclass(frozen=True)
class Scorer:
    """Smoothed CTR and composite item scores for one day."""

    stats: dict[str, tuple[float, float]]
    prior: float
    strength: float

    def ctr(self, item_id: str) -> float:
        shows, clicks = self.stats.get(item_id, (0.0, 0.0))
        clicks = min(clicks, shows) if shows else 0.0
        return (clicks + self.prior * self.strength) / (shows + self.strength)

    def score(self, item_id: str, purchased: bool, clicked: bool, relevance: int | None) -> float:
        base = 0.0
        if purchased:
            base = PURCHASE_BASE
        elif clicked:
            base = CLICK_BASE
        return base + self.ctr(item_id) + (relevance or 0) / MAX_RELEVANCE


class RLBuilder:
    """Builds the GRPO and listwise DPO rows from the SFT builder's sessions and prompts."""

    def __init__(self, sft: SFTBuilder, config: TrainingDataConfig) -> None:
        self.sft = sft
        self.config = config
        self.inputs = sft.inputs
        self.scorer = Scorer(item_statistics(self.inputs.rank_events), config.ctr_prior, config.ctr_prior_strength)
        self.relevance: dict[tuple[str, str], int] = {
            (str(query), str(item_id)): int(score) for query, item_id, score in zip(self.inputs.relevance["query"], self.inputs.relevance["item_id"], self.inputs.relevance["score"])
        }

    def prompt(self, session: Session) -> str:
        values = {
            "query": session.query, "query_sid": self.inputs.query_sids[session.query], "item_title": "", "item_sid": "",
            "keyword_span": "", **self.sft.context_values(session),
        }
        record = self.sft.templates.task("personalized_item_sid").render(values)
        return record["instruction"] + "\n" + record["input"]

    def build(self) -> tuple[TaskOutput, TaskOutput]:
        grpo, dpo = TaskOutput("grpo"), TaskOutput("dpo_listwise")
        labelled_by_query: dict[str, list[str]] = {}
        for (query, item) in sorted(self.relevance):
            labelled_by_query.setdefault(query, []).append(item)
        sids = self.inputs.item_sids

        for session in self.sft.sessions:
            if session.query not in self.inputs.query_sids:
                grpo.drop(QUERY_WITHOUT_SID)
                dpo.drop(QUERY_WITHOUT_SID)
                continue
            positives = [item for item in session.positives if item in sids]
            if not positives:
                reason = UNKNOWN_ITEM if session.positives else NO_POSITIVE
                grpo.drop(reason)
                dpo.drop(reason)
                continue
            prompt = self.prompt(session)
            user = user_token(session.user_id, self.config.user_salt)
            labelled = [item for item in labelled_by_query.get(session.query, []) if item in sids]
            shown = [item for item in dict.fromkeys(session.impressed + positives + labelled) if item in sids]
            purchased, clicked = set(session.purchased), set(session.clicked)

            grpo.emit(session.split_key, {
                "prompt": prompt,
                "user": user,
                "ground_truth_candidates": [sids[item] for item in positives],
                "order_sids": [sids[item] for item in positives if item in purchased],
                "click_sids": [sids[item] for item in positives if item in clicked],
                "relevance": {sids[item]: self.relevance[(session.query, item)] for item in labelled},
                "ctr": {sids[item]: round(self.scorer.ctr(item), 6) for item in shown},
            })

            def score(item: str) -> float:
                return self.scorer.score(item, item in purchased, item in clicked, self.relevance.get((session.query, item)))

            chosen = min(positives, key=lambda item: (-score(item), sids[item]))
            positive_sids = {sids[item] for item in positives}
            negatives = [
                item for item in shown
                if item not in purchased and item not in clicked and sids[item] not in positive_sids
                and (item in session.impressed or self.relevance.get((session.query, item), MAX_RELEVANCE) <= self.config.dpo_max_negative_relevance)
            ]
            negatives = sorted(negatives, key=lambda item: (score(item), sids[item]))[: self.config.dpo_negatives]
            if not negatives:
                dpo.drop(NO_NEGATIVES)
                continue
            dpo.emit(session.split_key, {
                "prompt": prompt,
                "user": user,
                "chosen": sids[chosen],
                "rejected": [sids[item] for item in negatives],
                "chosen_score": round(score(chosen), 6),
                "rejected_scores": [round(score(item), 6) for item in negatives],
            })
        return grpo, dpo
