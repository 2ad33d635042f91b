"""The SDFT loss on hand-built logits, and where gradients go in joint and ema modes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from onesearch_tasks.training.sdft import (
    IGNORE_INDEX,
    SDFTSettings,
    aligned_output_logits,
    distillation_kl,
    ema_update,
    sdft_loss,
    shifted_cross_entropy,
    student_records,
)

VOCAB = 7


def _labels(length: int, output_positions: list[int], tokens: list[int]) -> torch.Tensor:
    labels = torch.full((1, length), IGNORE_INDEX, dtype=torch.long)
    labels[0, output_positions] = torch.tensor(tokens)
    return labels


def test_alignment_when_prompts_differ():
    torch.manual_seed(0)
    student_logits = torch.randn(1, 6, VOCAB)
    teacher_logits = torch.randn(1, 9, VOCAB)
    # Output tokens sit at the last two positions; the predicting logits are one earlier.
    student_labels = _labels(6, [4, 5], [1, 2])
    teacher_labels = _labels(9, [7, 8], [1, 2])
    student_out, teacher_out = aligned_output_logits(student_logits, student_labels, teacher_logits, teacher_labels)
    assert torch.equal(student_out, student_logits[0, [3, 4]])
    assert torch.equal(teacher_out, teacher_logits[0, [6, 7]])


def test_alignment_ignores_padding_and_prompt():
    logits = torch.randn(2, 8, VOCAB)
    labels = torch.full((2, 8), IGNORE_INDEX, dtype=torch.long)
    labels[0, [3, 4]] = torch.tensor([1, 2])
    labels[1, [6, 7]] = torch.tensor([3, 4])
    student_out, _ = aligned_output_logits(logits, labels, logits, labels)
    assert student_out.shape == (4, VOCAB)
    assert torch.equal(student_out[2:], logits[1, [5, 6]])


def test_alignment_uses_last_tokens_when_lengths_differ():
    logits = torch.randn(1, 8, VOCAB)
    student_labels = _labels(8, [5, 6, 7], [1, 2, 3])
    teacher_labels = _labels(8, [6, 7], [2, 3])
    student_out, teacher_out = aligned_output_logits(logits, student_labels, logits, teacher_labels)
    assert torch.equal(student_out, logits[0, [5, 6]])
    assert torch.equal(teacher_out, logits[0, [5, 6]])


def test_kl_matches_manual_formula():
    student = torch.tensor([[0.0, 1.0, 2.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0]])
    temperature = 2.0
    p = F.softmax(teacher / temperature, dim=-1)
    q = F.softmax(student / temperature, dim=-1)
    expected = float((p * (p.log() - q.log())).sum())
    assert math.isclose(float(distillation_kl(student, teacher, temperature)), expected, rel_tol=1e-5)


def test_kl_zero_for_identical_logits():
    logits = torch.randn(3, VOCAB)
    assert float(distillation_kl(logits, logits.clone(), 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_temperature_softens_and_scales():
    student = torch.tensor([[0.0, 4.0, 0.0]])
    teacher = torch.tensor([[4.0, 0.0, 0.0]])
    assert float(distillation_kl(student, teacher, 4.0)) < float(distillation_kl(student, teacher, 1.0))
    labels = _labels(3, [1, 2], [1, 2])
    logits_s = torch.randn(1, 3, VOCAB)
    logits_t = torch.randn(1, 3, VOCAB)
    base = SDFTSettings(sdft_kl_weight=1.0, sdft_teacher_ce_weight=0.0, sdft_distill_temperature=3.0)
    parts = sdft_loss(logits_s, labels, logits_t, labels, base)
    expected = float(parts["student_ce"]) + 9.0 * float(parts["kl"])
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-5)


def test_loss_combines_terms():
    labels = _labels(4, [2, 3], [1, 5])
    student = torch.randn(1, 4, VOCAB)
    teacher = torch.randn(1, 4, VOCAB)
    settings = SDFTSettings(sdft_kl_weight=0.5, sdft_teacher_ce_weight=2.0, sdft_distill_temperature=1.0)
    parts = sdft_loss(student, labels, teacher, labels, settings)
    expected = float(shifted_cross_entropy(student, labels)) + 2.0 * float(shifted_cross_entropy(teacher, labels)) + 0.5 * float(parts["kl"])
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-5)


def test_teacher_probabilities_detached():
    labels = _labels(4, [2, 3], [1, 5])
    student = torch.randn(1, 4, VOCAB, requires_grad=True)
    teacher = torch.randn(1, 4, VOCAB, requires_grad=True)
    settings = SDFTSettings(sdft_kl_weight=1.0, sdft_teacher_ce_weight=0.0)
    sdft_loss(student, labels, teacher, labels, settings)["loss"].backward()
    assert teacher.grad is None or float(teacher.grad.abs().sum()) == 0.0
    assert float(student.grad.abs().sum()) > 0.0


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 5)
        self.head = torch.nn.Linear(5, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids))


def _gradients(settings: SDFTSettings, ema: bool) -> tuple[dict[str, torch.Tensor], torch.nn.Module | None]:
    torch.manual_seed(1)
    model = TinyLM()
    teacher_model = copy.deepcopy(model).requires_grad_(False) if ema else model
    student_ids = torch.tensor([[1, 2, 3, 4]])
    teacher_ids = torch.tensor([[1, 6, 6, 2, 3, 4]])
    student_labels = _labels(4, [3], [4])
    teacher_labels = _labels(6, [5], [4])
    if ema:
        with torch.no_grad():
            teacher_logits = teacher_model(teacher_ids)
    else:
        teacher_logits = teacher_model(teacher_ids)
    loss = sdft_loss(model(student_ids), student_labels, teacher_logits, teacher_labels, settings)["loss"]
    loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters()}, (teacher_model if ema else None)


def test_joint_teacher_ce_changes_gradient():
    without, _ = _gradients(SDFTSettings(sdft_mode="joint", sdft_teacher_ce_weight=0.0), ema=False)
    with_teacher, _ = _gradients(SDFTSettings(sdft_mode="joint", sdft_teacher_ce_weight=1.0), ema=False)
    assert not torch.allclose(without["embed.weight"], with_teacher["embed.weight"])


def test_ema_teacher_receives_no_gradient():
    _, teacher = _gradients(SDFTSettings(sdft_mode="ema", sdft_teacher_ce_weight=1.0), ema=True)
    assert all(param.grad is None for param in teacher.parameters())


def test_ema_update_formula():
    student, teacher = TinyLM(), TinyLM()
    before = {name: param.detach().clone() for name, param in teacher.named_parameters()}
    ema_update(teacher, student, 0.9)
    for name, param in teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(student.named_parameters())[name].detach()
        assert torch.allclose(param, expected), name


def test_student_records_strip_span():
    import re

    pattern = re.compile("相关商品关键词为(?:<[^<>]*>)+；")
    records = [{"instruction": "i", "input": "搜索词：<a>；相关商品关键词为<x><y>；请给出：", "output": "o"}]
    assert student_records(records, pattern)[0]["input"] == "搜索词：<a>；请给出："
    with pytest.raises(ValueError, match="matches nothing"):
        student_records([{"instruction": "i", "input": "no span", "output": "o"}], pattern)


def test_invalid_mode_rejected():
    with pytest.raises(ValueError, match="sdft_mode='both' is invalid"):
        SDFTSettings(sdft_mode="both")
