"""Every baseline loss in both forms against re-implementations of the authors' formulas (issue 12).

The references below are written from the formulas as METHODS.md ("Baselines as their authors
released them") and the issue describe them, not from ckd.losses:

* PKD (intersun/PKD-for-BERT-Model-Compression): patience = F.mse_loss of the stacked (B, L, d)
  L2-normalised [CLS] vectors; KD = KLDivLoss(reduction='mean')(log_softmax(y/T), softmax(t/T)) * T^2,
  total = alpha * KD + (1 - alpha) * CE. The paper: the sum over layers of squared distances, mean
  over the batch.
* TinyBERT (huawei-noah/Pretrained-Language-Model, task_distill.py): stage 1 attention scores get
  -10000 at padded keys, entries <= -100 become 0 in both models, MSELoss over everything; hidden
  MSELoss over every position. Stage 2: (-softmax(t/T) * log_softmax(s/T)).mean(); regression
  MSELoss(student.view(-1), label.view(-1)). The described forms count valid tokens only and use the
  teacher for regression.

Values and gradients (torch.autograd.grad) on random padded float64 inputs, plus the smallest
inputs of the issue.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ckd.losses import logits as logit_losses
from ckd.losses.pkd import pkd_patient
from ckd.losses.tinybert import TinyBertProjections, attention_mse, hidden_mse, prediction_loss
from ckd.methods import load_methods, resolve_method
from ckd.objectives import TERMS, Batch, Objective, Outputs

F64 = torch.float64
LENGTHS = [7, 4, 1, 6, 2]  # padded to 7


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


def mask(lengths, n=7):
    return torch.tensor([[1 if i < length else 0 for i in range(n)] for length in lengths])


def assert_same(ours, ref, inputs):
    """Equal values and equal gradients with respect to every tensor in `inputs`."""
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-9)
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad(ref, inputs, retain_graph=True, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def resolve(name, task="mrpc", **kwargs):
    return resolve_method(load_methods(None), name, task, known_terms=set(TERMS), **kwargs)


# --------------------------------------------------------------------------------------------- PKD


def ref_patience_released(teacher, student):
    """intersun patience_loss: F.mse_loss(normalize(stack of [CLS], dim=2)) = mean over B*L*d."""
    t = torch.stack([x[:, 0] for x in teacher], dim=1)
    s = torch.stack([x[:, 0] for x in student], dim=1)
    t = t / t.pow(2).sum(-1, keepdim=True).sqrt()
    s = s / s.pow(2).sum(-1, keepdim=True).sqrt()
    return (s - t).pow(2).sum() / s.numel()


def ref_patience_paper(teacher, student):
    """Paper: sum over layers of || s/|s| - t/|t| ||^2, mean over the batch."""
    total = 0.0
    for t, s in zip(teacher, student):
        tn = t[:, 0] / t[:, 0].norm(dim=-1, keepdim=True)
        sn = s[:, 0] / s[:, 0].norm(dim=-1, keepdim=True)
        total = total + (sn - tn).pow(2).sum(-1)
    return total.mean()


def test_pkd_both_reductions_match_the_formulas_values_and_gradients():
    teacher = [rand(5, 7, 6, seed=k) for k in range(3)]
    student = [rand(5, 7, 6, seed=10 + k).requires_grad_() for k in range(3)]
    m = mask(LENGTHS)
    assert_same(pkd_patient(teacher, student, m, released_reduction=True), ref_patience_released(teacher, student), student)
    assert_same(pkd_patient(teacher, student, m, released_reduction=False), ref_patience_paper(teacher, student), student)


def test_pkd_smallest_input_and_the_scale_between_the_forms():
    # One layer, d = 2, opposite-orthogonal [CLS]: the paper's sum is 2, the released mean over d is 1.
    teacher = [torch.tensor([[[1.0, 0.0]]], dtype=F64)]
    student = [torch.tensor([[[0.0, 1.0]]], dtype=F64)]
    assert pkd_patient(teacher, student, released_reduction=False).item() == pytest.approx(2.0, abs=1e-12)
    assert pkd_patient(teacher, student, released_reduction=True).item() == pytest.approx(1.0, abs=1e-12)
    # The factors: L*d = 768 for the glue-small 6->3 pkd-skip map at d = 384, 3840 for 12->6 at d = 768.
    for layers, width, factor in ((2, 384, 768), (5, 768, 3840)):
        t = [rand(2, 3, width, seed=k) for k in range(layers)]
        s = [rand(2, 3, width, seed=50 + k) for k in range(layers)]
        ratio = pkd_patient(t, s, released_reduction=False) / pkd_patient(t, s, released_reduction=True)
        assert ratio.item() == pytest.approx(factor, rel=1e-12)


def test_pkd_defaults_to_the_reduction_its_beta_was_tuned_under():
    method = resolve("pkd")
    term = next(t for t in method.terms if t.name == "pkd")
    assert term.options == {"released_reduction": True} and term.weight == 100.0
    record = method.to_record()
    assert record["recipe"]["name"] == "pkd" and record["settings"]["pkd_released_reduction"] is True
    paper = resolve("pkd", options={"pkd_released_reduction": False})
    assert next(t for t in paper.terms if t.name == "pkd").options == {"released_reduction": False}


# ---------------------------------------------------------------------------------------------- KD

CONFIG = SimpleNamespace(hidden_size=8, num_hidden_layers=2, num_attention_heads=2)


def objective(method, *, regression=False):
    return Objective(method, regression=regression, teacher_config=CONFIG, student_config=CONFIG)


def ref_kd_released(y, t, labels, temperature, alpha):
    """intersun distillation_loss: alpha * KLDivLoss(reduction='mean')(...) * T * T + (1 - alpha) * CE."""
    d_loss = torch.nn.KLDivLoss(reduction="mean")(F.log_softmax(y / temperature, dim=1), F.softmax(t / temperature, dim=1))
    d_loss = d_loss * temperature * temperature
    return alpha * d_loss + (1.0 - alpha) * F.cross_entropy(y, labels)


def ref_kd_described(y, t, labels, temperature, alpha, t2=True):
    """Hinton et al.: KL(p_T || p_S) summed over classes, mean over the batch, times T^2."""
    p_t = torch.softmax(t / temperature, dim=1)
    kl = (p_t * (p_t.log() - torch.log_softmax(y / temperature, dim=1))).sum(1).mean()
    return alpha * kl * (temperature**2 if t2 else 1.0) + (1.0 - alpha) * F.cross_entropy(y, labels)


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides")  # the released KLDivLoss(reduction='mean')
@pytest.mark.parametrize("classes", [2, 3])
def test_kd_as_described_and_as_released_by_pkd(classes):
    y = rand(6, classes, seed=1, scale=2.0).requires_grad_()
    t = rand(6, classes, seed=2, scale=2.0)
    labels = torch.arange(6) % classes
    batch = Batch(labels=labels, attention_mask=mask([3] * 6, n=3))
    for options, ref in (
        ({}, ref_kd_described(y, t, labels, 10.0, 0.5)),
        ({"t2_scale": False}, ref_kd_described(y, t, labels, 10.0, 0.5, t2=False)),
        ({"kd_class_mean": True}, ref_kd_released(y, t, labels, 10.0, 0.5)),
        ({"kd_class_mean": True, "temperature": 5.0, "alpha": 0.2}, ref_kd_released(y, t, labels, 5.0, 0.2)),
    ):
        loss, values = objective(resolve("kd", options=options))(batch, Outputs(logits=y), Outputs(logits=t))
        assert_same(loss, ref, [y])
    # pkd-released is PKD with KD's class mean on: its KD term is the released one.
    assert resolve("pkd-released").settings["kd_class_mean"] is True
    assert resolve("pkd").settings["kd_class_mean"] is False


def test_kd_scale_between_the_forms_is_the_class_count():
    y, t = rand(4, 3, seed=1), rand(4, 3, seed=2)
    ours = logit_losses.kd_loss(y, t, 4.0)
    released = logit_losses.kd_loss(y, t, 4.0, class_mean=True)
    assert (ours / released).item() == pytest.approx(3.0, rel=1e-12)


# --------------------------------------------------------------------------------- TinyBERT stage 1


def ref_attention_released(teacher, student, m):
    """task_distill.py: scores + (1 - mask) * -10000 at keys; where(x <= -1e2, 0, x) in both; MSELoss."""
    total = 0.0
    extended = (1.0 - m.to(F64))[:, None, None, :] * -10000.0
    for t, s in zip(teacher, student):
        s_att, t_att = s + extended, t + extended
        s_att = torch.where(s_att <= -1e2, torch.zeros_like(s_att), s_att)
        t_att = torch.where(t_att <= -1e2, torch.zeros_like(t_att), t_att)
        total = total + torch.nn.MSELoss()(s_att, t_att)
    return total


def ref_attention_described(teacher, student, m):
    """Mean over heads and (query, key) pairs with both tokens valid, summed over layers."""
    total = 0.0
    valid = m.to(F64)
    weight = torch.einsum("bi,bj->bij", valid, valid)[:, None]  # (B, 1, n, n)
    for t, s in zip(teacher, student):
        heads = t.shape[1]
        total = total + ((s - t).pow(2) * weight).sum() / (heads * weight.sum())
    return total


def attention_inputs():
    teacher = [rand(5, 3, 7, 7, seed=k, scale=3.0) for k in range(2)]
    student = [rand(5, 3, 7, 7, seed=10 + k, scale=3.0) for k in range(2)]
    teacher[0][0, 1, 2, 3] = -150.0  # a valid entry below -100: the released form zeroes it too
    student = [s.requires_grad_() for s in student]
    return teacher, student


def test_tinybert_attention_both_forms_match_the_formulas():
    teacher, student = attention_inputs()
    m = mask(LENGTHS)
    assert_same(attention_mse(teacher, student, m, released_padding=True), ref_attention_released(teacher, student, m), student)
    assert_same(attention_mse(teacher, student, m), ref_attention_described(teacher, student, m), student)


def test_tinybert_attention_without_mask_means_every_token_is_valid_in_both_forms():
    teacher, student = attention_inputs()
    full = mask([7] * 5)
    for released in (False, True):
        assert_same(attention_mse(teacher, student, None, released_padding=released),
                    attention_mse(teacher, student, full, released_padding=released), student)
    assert_same(attention_mse(teacher, student, None, released_padding=True), ref_attention_released(teacher, student, full), student)
    assert_same(attention_mse(teacher, student, None), ref_attention_described(teacher, student, full), student)


def test_tinybert_attention_smallest_input():
    # B = H = 1, n = 2, mask [1, 0], teacher scores [[1, 5], [2, 7]], student 0: masked 1.0, released 1.25.
    teacher = [torch.tensor([[[[1.0, 5.0], [2.0, 7.0]]]], dtype=F64)]
    student = [torch.zeros(1, 1, 2, 2, dtype=F64)]
    m = torch.tensor([[1, 0]])
    assert attention_mse(teacher, student, m).item() == pytest.approx(1.0, abs=1e-12)
    assert attention_mse(teacher, student, m, released_padding=True).item() == pytest.approx(1.25, abs=1e-12)
    assert ref_attention_released(teacher, student, m).item() == pytest.approx(1.25, abs=1e-12)


def ref_hidden(teacher, student, linears, m, released):
    """Sum over pairs of MSE(W s + b, t): over every position (released) or valid tokens only."""
    total = 0.0
    valid = m.to(F64)[..., None]
    for t, s, lin in zip(teacher, student, linears):
        projected = s if lin is None else s @ lin.weight.T + lin.bias
        squared = (projected - t).pow(2)
        if released:
            total = total + squared.sum() / squared.numel()
        else:
            total = total + (squared * valid).sum() / (valid.sum() * t.shape[-1])
    return total


@pytest.mark.parametrize("released", [False, True])
def test_tinybert_hidden_both_forms_match_the_formulas(released):
    torch.manual_seed(0)
    proj = TinyBertProjections(4, 6, 3, sharing="released").double()
    teacher = [rand(5, 7, 6, seed=k) for k in range(3)]
    student = [rand(5, 7, 4, seed=10 + k).requires_grad_() for k in range(3)]
    m = mask(LENGTHS)
    ours = hidden_mse(teacher, student, proj, m, released_padding=released)
    ref = ref_hidden(teacher, student, [proj.maps[0]] * 3, m, released)
    assert_same(ours, ref, [*student, *proj.parameters()])
    # Without a mask every position counts: both forms are the plain mean.
    assert_same(hidden_mse(teacher, student, proj, None, released_padding=released),
                ref_hidden(teacher, student, [proj.maps[0]] * 3, mask([7] * 5), True), student)


def test_tinybert_stage1_switch_reaches_every_term_and_its_normaliser():
    for name, released in (("tinybert-intermediate", False), ("tinybert-intermediate-released", True)):
        method = resolve(name)
        assert {t.name: t.options for t in method.terms} == {
            term: {"released_padding": released} for term in ("tinybert_embedding", "tinybert_hidden", "tinybert_attention")
        }
        obj = Objective(method, regression=False, teacher_config=SimpleNamespace(hidden_size=8, num_hidden_layers=4, num_attention_heads=2),
                        student_config=SimpleNamespace(hidden_size=8, num_hidden_layers=2, num_attention_heads=2))
        m = mask(LENGTHS)
        counts = obj.counts(Batch(labels=torch.zeros(5, dtype=torch.long), attention_mask=m))
        tokens, pairs = float(sum(LENGTHS)), float(sum(n * n for n in LENGTHS))
        expected = {"tinybert_embedding": 5.0, "tinybert_hidden": 5.0, "tinybert_attention": 5.0} if released else \
            {"tinybert_embedding": tokens, "tinybert_hidden": tokens, "tinybert_attention": pairs}
        assert counts == expected
    assert resolve("tinybert-released").after == "tinybert-intermediate-released"


# --------------------------------------------------------------------------------- TinyBERT stage 2


def ref_soft_cross_entropy_released(predicts, targets):
    """task_distill.py soft_cross_entropy: (-softmax(targets) * log_softmax(predicts)).mean()."""
    return (-F.softmax(targets, dim=-1) * F.log_softmax(predicts, dim=-1)).mean()


@pytest.mark.parametrize("classes", [2, 3])
def test_tinybert_prediction_classification_both_forms(classes):
    s = rand(6, classes, seed=3, scale=2.0).requires_grad_()
    t = rand(6, classes, seed=4, scale=2.0)
    labels = torch.arange(6) % classes
    batch = Batch(labels=labels, attention_mask=mask([3] * 6, n=3))
    described, _ = objective(resolve("tinybert"))(batch, Outputs(logits=s), Outputs(logits=t))
    released, _ = objective(resolve("tinybert-released"))(batch, Outputs(logits=s), Outputs(logits=t))
    assert_same(released, ref_soft_cross_entropy_released(s / 1.0, t / 1.0), [s])
    assert_same(described, classes * ref_soft_cross_entropy_released(s, t), [s])  # summed over classes


def test_tinybert_prediction_regression_smallest_input_and_gradients():
    # z_S = 0, z_T = 1, y = 2: MSE(z_S, z_T) = 1 as described, MSE(z_S, y) = 4 as released.
    s = torch.zeros(1, 1, dtype=F64, requires_grad=True)
    t = torch.ones(1, 1, dtype=F64)
    y = torch.full((1,), 2.0, dtype=F64)
    batch = Batch(labels=y, attention_mask=torch.ones(1, 2, dtype=torch.long))
    described, _ = objective(resolve("tinybert", task="stsb"), regression=True)(batch, Outputs(logits=s), Outputs(logits=t))
    released, _ = objective(resolve("tinybert-released", task="stsb"), regression=True)(batch, Outputs(logits=s), Outputs(logits=t))
    assert described.item() == pytest.approx(1.0) and released.item() == pytest.approx(4.0)
    # Random batch: values and gradients against MSELoss(student.view(-1), label.view(-1)) / MSE(z_S, z_T).
    s = rand(6, 1, seed=5).requires_grad_()
    t, y = rand(6, 1, seed=6), rand(6, seed=7)
    assert_same(prediction_loss(s, t, y, regression=True, released_regression=True),
                torch.nn.MSELoss()(s.view(-1), y.view(-1)), [s])
    assert_same(prediction_loss(s, t, y, regression=True), ((s - t) ** 2).mean(), [s])
    # The released form never reads the teacher.
    assert prediction_loss(s, t * 100, y, regression=True, released_regression=True).item() == pytest.approx(
        prediction_loss(s, t, y, regression=True, released_regression=True).item())

