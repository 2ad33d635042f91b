"""Prompt template files: loading, placeholder checks, rendering and the SDFT span regex."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from onesearch_tasks.data.templates import DEFAULT_TEMPLATE_DIR, TASK_FIELDS, TemplateError, load_templates


@pytest.mark.parametrize("language", ["zh", "en"])
def test_shipped_templates_load(language):
    templates = load_templates(language)
    assert set(templates.tasks) == set(TASK_FIELDS)
    assert templates.language == language


def test_chinese_is_default_language():
    from onesearch_tasks.config import TrainingDataConfig

    assert TrainingDataConfig().language == "zh"


@pytest.mark.parametrize("language", ["zh", "en"])
def test_keyword_span_removed_by_pattern(language):
    templates = load_templates(language)
    values = {
        "query": "羽绒服", "query_sid": "<a_1><b_2><c_3><d_4><d_260>", "item_title": "t", "item_sid": "<a_1><b_1><c_1><d_1><d_257>",
        "profile": templates.profile("F", "24-30"), "recent_queries": templates.join_queries(["a", "b"]),
        "recent_item_sids": templates.join_sids([]),
    }
    student = templates.task("personalized_item_sid").render({**values, "keyword_span": ""})["input"]
    span = templates.keyword_span(["加厚", "黑<色>", "Nike"])
    teacher = templates.task("personalized_item_sid").render({**values, "keyword_span": span})["input"]
    assert teacher != student
    assert re.sub(templates.sdft_keyword_pattern, "", teacher, count=1) == student


def _copy_templates(tmp_path):
    folder = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATE_DIR, folder)
    return folder


def _edit(folder, change):
    path = folder / "zh.yaml"
    tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(tree)
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")


def test_unknown_placeholder_rejected(tmp_path):
    folder = _copy_templates(tmp_path)
    _edit(folder, lambda tree: tree["tasks"]["query_to_sid"].update(input="搜索词：<{qurey}>"))
    with pytest.raises(TemplateError, match=r"task 'query_to_sid' input uses unknown placeholder\(s\) \['qurey'\]"):
        load_templates("zh", folder)


def test_missing_task_rejected(tmp_path):
    folder = _copy_templates(tmp_path)
    _edit(folder, lambda tree: tree["tasks"].pop("sid_to_item"))
    with pytest.raises(TemplateError, match="lacks tasks: sid_to_item"):
        load_templates("zh", folder)


def test_unknown_task_rejected(tmp_path):
    folder = _copy_templates(tmp_path)
    _edit(folder, lambda tree: tree["tasks"].update(made_up={"instruction": "a", "input": "b", "output": "c"}))
    with pytest.raises(TemplateError, match="unknown tasks"):
        load_templates("zh", folder)


def test_fragment_placeholder_rejected(tmp_path):
    folder = _copy_templates(tmp_path)
    _edit(folder, lambda tree: tree["fragments"].update(profile="{age}岁"))
    with pytest.raises(TemplateError, match=r"fragment 'profile' uses unknown placeholder"):
        load_templates("zh", folder)


def test_missing_pattern_rejected(tmp_path):
    folder = _copy_templates(tmp_path)
    _edit(folder, lambda tree: tree.pop("sdft_keyword_pattern"))
    with pytest.raises(TemplateError, match="lacks sdft_keyword_pattern"):
        load_templates("zh", folder)


def test_missing_language_file(tmp_path):
    with pytest.raises(TemplateError, match="template file not found"):
        load_templates("fr", tmp_path)


def test_malformed_braces_rejected(tmp_path):
    folder = _copy_templates(tmp_path)
    _edit(folder, lambda tree: tree["tasks"]["query_to_sid"].update(output="{query_sid"))
    with pytest.raises(TemplateError, match="malformed template"):
        load_templates("zh", folder)


def test_profile_unknown_gender_and_age():
    templates = load_templates("en")
    assert templates.profile(None, None) == "gender unknown, age unknown"
    assert templates.profile("m", "18-23") == "male, age 18-23"
