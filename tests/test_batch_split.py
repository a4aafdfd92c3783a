"""An optimiser step's loss and gradients do not depend on how its batch is split into micro-batches
(`train.grad_accum`): every method, float64, a batch of sentences of unequal lengths.

Each term is normalised over the whole step (per example, per token, per token pair, per n_b^3, ...);
the training loop weights every micro-batch by its share of each term's normaliser. A scheme that
weights micro-batches by their share of examples only (what the loop did before) fails this test for
every term that is not a per-example mean; see `test_example_share_weighting_is_not_exact`.
"""

from __future__ import annotations

import pytest
import torch

from ckd.config import resolve_config
from ckd.data.encoding import EncodedSplit
from ckd.data.tasks import get_task
from ckd.distributed import Runtime
from ckd.methods import load_methods, resolve_method
from ckd.models import build_model
from ckd.objectives import TERMS, Objective
from ckd.runs import make_step_loss
from ckd.train import Trainer, TrainSetup

LENGTHS = [5, 17, 9, 23, 3, 12, 20, 7]
ORDER = [3, 0, 5, 1, 7, 2, 6, 4]  # the step's examples: micro-batches of different widths
SPLITS = (1, 2, 4, 8)
METHODS = sorted(load_methods(None)["methods"])
REGRESSION_METHODS = ["finetune", "kd", "ckd", "ckd-released", "tinybert", "pkd", "ckd-full-triple"]
SHAPE = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64, "dropout": 0}


def _data(task) -> EncodedSplit:
    g = torch.Generator().manual_seed(0)
    ids = [[2, *torch.randint(5, 200, (n - 2,), generator=g).tolist(), 3] for n in LENGTHS]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in LENGTHS]
    labels = torch.rand(len(LENGTHS), generator=g) * 5 if task.is_regression else torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    return EncodedSplit(task=task, input_ids=ids, token_type_ids=types, labels=labels, pad_token_id=0, max_length=32)


@pytest.fixture(scope="module", params=["syn-pair", "syn-similarity"])
def models(request):
    task = get_task(request.param)
    torch.manual_seed(0)
    common = {"num_labels": task.num_labels, "regression": task.is_regression}
    teacher = build_model({**SHAPE, "layers": 4}, role="teacher", seed=1, **common).model.double().eval().requires_grad_(False)
    student = build_model({**SHAPE, "layers": 2}, role="student", seed=2, **common).model.double().train()
    return task, teacher, student


def _trainer(task, teacher, student, method: str, grad_accum: int, tmp_path) -> Trainer:
    resolved = resolve_method(load_methods(None), method, task.name, use_task_settings=False, known_terms=set(TERMS))
    objective = Objective(resolved, regression=task.is_regression, teacher_config=teacher.config, student_config=student.config)
    objective.double()
    torch.manual_seed(3)  # TinyBERT's learnable projections: the same start for every split
    for p in objective.parameters():
        torch.nn.init.normal_(p, std=0.2)
    config = resolve_config("finetune", None, [f"train.grad_accum={grad_accum}", "train.batch_size=8", "seed=1", f"task={task.name}",
                                               "model.init=random", "model.tokenizer=synthetic", f"output_dir={tmp_path}"])
    needs_teacher = objective.needs_teacher
    setup = TrainSetup(
        run_dir=tmp_path, config=config, config_fingerprint="test", student=student, objective=objective,
        step_loss=make_step_loss(objective, student, teacher if needs_teacher else None),
        train_data=_data(task), dev_data={}, task=task, lr=1e-3, epochs=1,
        runtime=Runtime(device=torch.device("cpu"), precision="fp32"),
    )
    return Trainer(setup)


def _step(task, teacher, student, method, grad_accum, tmp_path):
    trainer = _trainer(task, teacher, student, method, grad_accum, tmp_path)
    loss, terms = trainer.accumulate_gradients(ORDER)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainer.params]
    return loss, terms, grads


def _assert_same(reference, other, label):
    (loss_a, terms_a, grads_a), (loss_b, terms_b, grads_b) = reference, other
    assert loss_b == pytest.approx(loss_a, rel=1e-6, abs=1e-12), label
    assert terms_b.keys() == terms_a.keys()
    for name in terms_a:
        assert terms_b[name] == pytest.approx(terms_a[name], rel=1e-6, abs=1e-12), f"{label}: term {name}"
    for i, (a, b) in enumerate(zip(grads_a, grads_b)):
        scale = a.abs().max().clamp_min(1e-12)
        assert float((a - b).abs().max() / scale) < 1e-6, f"{label}: gradient of parameter {i}"


@pytest.mark.parametrize("method", METHODS)
def test_step_is_independent_of_grad_accum(method, models, tmp_path):
    task, teacher, student = models
    if task.is_regression and method not in REGRESSION_METHODS:
        pytest.skip("classification covers it; regression checks the logit terms' regression forms")
    whole = _step(task, teacher, student, method, 1, tmp_path)
    assert any(float(g.abs().max()) > 0 for g in whole[2]), "the loss must reach the student"
    for grad_accum in SPLITS[1:]:
        _assert_same(whole, _step(task, teacher, student, method, grad_accum, tmp_path), f"{method} grad_accum={grad_accum}")


def test_whole_step_equals_one_objective_call(models, tmp_path):
    """grad_accum=1 is the plain objective on the whole batch, padded to its longest row."""
    task, teacher, student = models
    trainer = _trainer(task, teacher, student, "ckd", 1, tmp_path)
    loss, terms = trainer.accumulate_gradients(ORDER)
    batch = _data(task).batch(ORDER)
    direct, direct_terms = trainer.setup.step_loss(batch)
    assert loss == pytest.approx(float(direct.detach()), rel=1e-12)
    assert terms == pytest.approx(direct_terms, rel=1e-12)


def test_example_share_weighting_is_not_exact(models, tmp_path):
    """The check above can fail: weighting micro-batch values by their share of examples (the old
    scheme) changes every relation term when the batch is split, on this same batch."""
    task, teacher, student = models
    trainer = _trainer(task, teacher, student, "ckd", 1, tmp_path)
    data = _data(task)
    _, whole = trainer.setup.step_loss(data.batch(ORDER))
    halves = [ORDER[:4], ORDER[4:]]
    width = data.width(ORDER)
    parts = [(trainer.setup.step_loss(data.batch(h, width=width))[1], len(h) / len(ORDER)) for h in halves]
    for name in ("wr_pair", "wr_triple", "ltr_pair", "ltr_triple"):
        by_examples = sum(terms[name] * weight for terms, weight in parts)
        assert abs(by_examples - whole[name]) > 1e-3 * abs(whole[name]), name


def test_padding_width_is_the_steps_longest_row():
    data = _data(get_task("syn-pair"))
    batch = data.batch([4, 0], width=data.width(ORDER))
    assert batch["input_ids"].shape == (2, 23)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 5]
    with pytest.raises(ValueError, match="shorter than the longest row"):
        data.batch([3], width=10)
