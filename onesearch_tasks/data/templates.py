"""Prompt templates for the SFT tasks, loaded from `<template_dir>/<language>.yaml`.

A template file has `tasks` (instruction, input and output per task, with `{placeholder}`
fields), `fragments` (profile, separators, the keyword span) and `sdft_keyword_pattern`,
the regex that removes the keyword span from a teacher input. Loading checks every
placeholder against TASK_FIELDS, so a typo fails before any data is built.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

_USER_CONTEXT = frozenset({"profile", "recent_queries", "recent_item_sids"})
# Placeholders each task may use.
TASK_FIELDS: dict[str, frozenset[str]] = {
    "query_to_sid": frozenset({"query", "query_sid"}),
    "sid_to_query": frozenset({"query", "query_sid"}),
    "item_to_sid": frozenset({"item_title", "item_sid"}),
    "sid_to_item": frozenset({"item_title", "item_sid"}),
    "item_to_category": frozenset({"item_title", "item_sid", "category"}),
    "query_to_category": frozenset({"query", "query_sid", "category"}),
    "item_sid_to_category": frozenset({"item_title", "item_sid", "category"}),
    "query_to_keywords": frozenset({"query", "query_sid", "keywords"}),
    "query_sid_to_keyword_sid": frozenset({"query", "query_sid", "keyword", "keyword_sid"}),
    "personalized_keywords": frozenset({"query", "query_sid", "keywords"}) | _USER_CONTEXT,
    "personalized_keyword_sid": frozenset({"query", "query_sid", "keyword", "keyword_sid"}) | _USER_CONTEXT,
    "query_to_item": frozenset({"query", "query_sid", "item_title", "item_sid"}),
    "item_to_query": frozenset({"query", "query_sid", "item_title", "item_sid"}),
    "query_sid_to_item_sid": frozenset({"query", "query_sid", "item_title", "item_sid"}),
    "item_sid_to_query_sid": frozenset({"query", "query_sid", "item_title", "item_sid"}),
    "personalized_item_sid": frozenset({"query", "query_sid", "item_title", "item_sid", "keyword_span"}) | _USER_CONTEXT,
}
TEMPLATE_PARTS = ("instruction", "input", "output")
FRAGMENT_FIELDS: dict[str, frozenset[str]] = {
    "profile": frozenset({"gender", "age_bucket"}),
    "keyword_span": frozenset({"keyword_tokens"}),
    "gender_male": frozenset(), "gender_female": frozenset(), "gender_unknown": frozenset(),
    "age_unknown": frozenset(), "none": frozenset(), "list_separator": frozenset(), "sid_separator": frozenset(),
}


class TemplateError(ValueError):
    """A template file is missing, malformed or uses an unknown placeholder."""


def placeholders(text: str) -> set[str]:
    """Field names of a str.format template."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:
        raise TemplateError(f"malformed template {text!r}: {error}") from error


@dataclass(frozen=True)
class TaskTemplate:
    instruction: str
    input: str
    output: str

    def render(self, values: dict[str, str]) -> dict[str, str]:
        """Return the alpaca record {instruction, input, output}."""
        return {part: getattr(self, part).format(**values) for part in TEMPLATE_PARTS}


@dataclass(frozen=True)
class TemplateSet:
    """All task templates and fragments of one language."""

    language: str
    path: Path
    tasks: dict[str, TaskTemplate]
    fragments: dict[str, str]
    sdft_keyword_pattern: str

    def task(self, name: str) -> TaskTemplate:
        return self.tasks[name]

    def profile(self, gender: str | None, age_bucket: str | None) -> str:
        gender_word = {"M": self.fragments["gender_male"], "F": self.fragments["gender_female"]}.get(
            (gender or "").upper(), self.fragments["gender_unknown"]
        )
        return self.fragments["profile"].format(gender=gender_word, age_bucket=age_bucket or self.fragments["age_unknown"])

    def join_queries(self, queries: list[str]) -> str:
        return "".join(f"<{query}>" for query in queries) if queries else self.fragments["none"]

    def join_sids(self, sids: list[str]) -> str:
        return self.fragments["sid_separator"].join(sids) if sids else self.fragments["none"]

    def join_keywords(self, keywords: list[str]) -> str:
        return self.fragments["list_separator"].join(keywords)

    def keyword_span(self, keywords: list[str]) -> str:
        """Render the teacher-only keyword span. Angle brackets inside keywords are dropped so the regex finds its end."""
        tokens = "".join("<" + re.sub(r"[<>]", "", keyword) + ">" for keyword in keywords)
        return self.fragments["keyword_span"].format(keyword_tokens=tokens)


def load_templates(language: str, template_dir: str | Path | None = None) -> TemplateSet:
    """Load and check `<template_dir>/<language>.yaml`; raise TemplateError naming the problem."""
    folder = Path(template_dir) if template_dir else DEFAULT_TEMPLATE_DIR
    path = folder / f"{language}.yaml"
    if not path.is_file():
        raise TemplateError(f"template file not found: {path}; set training_data.language or training_data.template_dir")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise TemplateError(f"template file {path} is not valid YAML: {error}") from error

    tasks_tree = tree.get("tasks") or {}
    missing = sorted(set(TASK_FIELDS) - set(tasks_tree))
    if missing:
        raise TemplateError(f"template file {path} lacks tasks: {', '.join(missing)}")
    unknown_tasks = sorted(set(tasks_tree) - set(TASK_FIELDS))
    if unknown_tasks:
        raise TemplateError(f"template file {path} has unknown tasks {unknown_tasks}; known: {sorted(TASK_FIELDS)}")

    tasks: dict[str, TaskTemplate] = {}
    for name, parts in tasks_tree.items():
        if not isinstance(parts, dict) or set(parts) != set(TEMPLATE_PARTS):
            raise TemplateError(f"template {path} task {name!r} must have exactly {', '.join(TEMPLATE_PARTS)}")
        for part in TEMPLATE_PARTS:
            unknown = placeholders(str(parts[part])) - TASK_FIELDS[name]
            if unknown:
                raise TemplateError(
                    f"template {path} task {name!r} {part} uses unknown placeholder(s) {sorted(unknown)}; "
                    f"allowed: {sorted(TASK_FIELDS[name])}"
                )
        tasks[name] = TaskTemplate(**{part: str(parts[part]) for part in TEMPLATE_PARTS})

    fragments = {key: str(value) for key, value in (tree.get("fragments") or {}).items()}
    missing_fragments = sorted(set(FRAGMENT_FIELDS) - set(fragments))
    if missing_fragments:
        raise TemplateError(f"template file {path} lacks fragments: {', '.join(missing_fragments)}")
    for name, allowed in FRAGMENT_FIELDS.items():
        unknown = placeholders(fragments[name]) - allowed
        if unknown:
            raise TemplateError(f"template {path} fragment {name!r} uses unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}")

    pattern = tree.get("sdft_keyword_pattern")
    if not pattern:
        raise TemplateError(f"template file {path} lacks sdft_keyword_pattern")
    return TemplateSet(str(tree.get("language", language)), path, tasks, fragments, str(pattern))
