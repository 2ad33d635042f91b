"""Per-session views of the day's logs: positives, impressions and the user's context.

A session is keyed by (user_id, session_id). The search log gives its impressions, clicks
and purchases. Ranked rows of the same session add their clicked or bought targets and the
user's earlier clicks and purchases. A session that appears only in the ranking log is
built from its ranked rows alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd

from onesearch_tasks.data.inputs import TrainingInputs

USER_TOKEN_PREFIX = "u_"
USER_TOKEN_HEX_DIGITS = 16


def user_token(user_id: str | None, salt: str) -> str:
    """Salted SHA-256 token written instead of a raw user id ('' for a missing id)."""
    if user_id is None or user_id == "":
        return ""
    return USER_TOKEN_PREFIX + hashlib.sha256(f"{salt}:{user_id}".encode("utf-8")).hexdigest()[:USER_TOKEN_HEX_DIGITS]


@dataclass
class Session:
    """One search session and the user context shown with it."""

    user_id: str
    session_id: str
    query: str
    time_index: int
    impressed: list[str] = field(default_factory=list)
    clicked: list[str] = field(default_factory=list)
    purchased: list[str] = field(default_factory=list)
    # Earlier clicks and purchases from the ranking log (oldest first); None when absent.
    ranked_history: list[str] | None = None
    recent_queries: list[str] = field(default_factory=list)
    recent_items: list[str] = field(default_factory=list)

    @property
    def positives(self) -> list[str]:
        """Purchased items first, then clicked ones, without repeats."""
        return list(dict.fromkeys(self.purchased + self.clicked))

    @property
    def split_key(self) -> str:
        if self.user_id:
            return f"user:{self.user_id}"
        return f"session:{self.session_id}:{self.query}"


def _append_unique(values: list[str], extra: list[str]) -> None:
    for value in extra:
        if value not in values:
            values.append(value)


def build_sessions(inputs: TrainingInputs, max_history: int) -> list[Session]:
    """Merge search and ranking logs into sessions ordered by (user, time, session)."""
    sessions: dict[tuple[str, str], Session] = {}
    for row in inputs.sessions.itertuples(index=False):
        key = (str(row.user_id), str(row.session_id))
        sessions[key] = Session(
            user_id=key[0], session_id=key[1], query=row.query, time_index=int(row.time_index or 0),
            impressed=list(row.impressed_item_ids), clicked=list(row.clicked_item_ids), purchased=list(row.purchased_item_ids),
        )
    for row in inputs.rank_events.itertuples(index=False):
        key = (str(row.user_id), str(row.session_id))
        session = sessions.get(key)
        if session is None:
            session = Session(user_id=key[0], session_id=key[1], query=row.query, time_index=int(row.time_index or 0))
            sessions[key] = session
        target = str(row.target_item_id)
        _append_unique(session.impressed, [target])
        if row.is_clicked == 1:
            _append_unique(session.clicked, [target])
        if row.is_purchased == 1:
            _append_unique(session.purchased, [target])
        if session.ranked_history is None:
            session.ranked_history = list(row.recently_clicked_item_ids) + list(row.recently_purchased_item_ids)

    ordered = sorted(sessions.values(), key=lambda s: (s.user_id, s.time_index, s.session_id))
    _attach_history(ordered, max_history)
    return ordered


def _attach_history(ordered: list[Session], max_history: int) -> None:
    """Fill recent_queries and recent_items from the same user's earlier sessions."""
    previous_user = None
    queries: list[str] = []
    items: list[str] = []
    for session in ordered:
        if session.user_id != previous_user or not session.user_id:
            queries, items, previous_user = [], [], session.user_id
        session.recent_queries = list(dict.fromkeys(reversed(queries)))[:max_history][::-1]
        history = session.ranked_history if session.ranked_history is not None else items
        session.recent_items = list(dict.fromkeys(reversed(history)))[:max_history][::-1]
        if session.query:
            queries.append(session.query)
        items.extend(session.clicked + session.purchased)


def item_statistics(rank_events: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Item id -> (shows, clicks) over the ranking log's 30-day counts (max per item)."""
    if not len(rank_events):
        return {}
    grouped = rank_events.groupby("target_item_id")[["item_shows", "item_clicks"]].max().fillna(0.0)
    return {str(item): (float(shows), float(clicks)) for item, shows, clicks in grouped.itertuples()}
