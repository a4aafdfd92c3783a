"""DynaBERT (ckd/dynabert): depth pattern, rewiring, sub-network export, the two stages' losses, the
rewire -> width -> depth -> evaluate -> export chain for both objectives, and kill -9 resume per stage.

References are written from the DynaBERT authors' released code (huawei-noah/Pretrained-Language-Model,
DynaBERT/run_glue.py and transformers/modeling_bert.py), not from ckd's implementation: the layer
pattern `floor(i / depth_mult) for i in range(round(depth_mult * L))`, the head count
`round(H * width_mult)`, `soft_cross_entropy` and `MSELoss()` on every hidden state; importance scores
are checked against finite differences of the loss.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from ckd.dynabert import dynamic
from ckd.dynabert.config import resolve
from ckd.dynabert.objective import StageObjective
from ckd.dynabert.rewire import importance, reorder
from ckd.dynabert.stages import evaluate_subnets, export_subnets, make_stage_loss, rewire, stage_method, train_stage
from ckd.dynabert.subnet import SubNet, grid, kept_ffn, kept_heads, kept_layers, param_count
from ckd.errors import ConfigError
from tests.test_reliability_kill import Child, run_and_stop

torch.set_num_threads(1)
WIDTHS, DEPTHS = (0.25, 0.5, 0.75, 1.0), (0.5, 0.75, 1.0)


def tiny_bert(seed: int = 0, layers: int = 4, dtype=torch.float32) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
                        num_labels=3, max_position_embeddings=32, attn_implementation="eager")
    return BertForSequenceClassification(config).to(dtype).eval()


class Split:
    """The part of ckd.data.encoding.EncodedSplit the rewiring reads: len() and batch(indices)."""

    def __init__(self, size: int = 24, length: int = 9, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 60, (size, length), generator=g)
        self.mask = torch.ones(size, length, dtype=torch.long)
        for i in range(size):
            self.mask[i, 4 + i % (length - 4):] = 0
        self.labels = torch.randint(0, 3, (size,), generator=g)

    def __len__(self):
        return len(self.labels)

    def batch(self, indices):
        idx = torch.as_tensor(indices)
        return {"input_ids": self.ids[idx], "attention_mask": self.mask[idx], "token_type_ids": torch.zeros_like(self.ids[idx]),
                "labels": self.labels[idx]}


def inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


# ----------------------------------------------------------------------------------------- shapes

def test_depth_and_width_follow_the_authors_rounding():
    for layers in (4, 6, 12):
        for depth in DEPTHS:
            released = [math.floor(i / depth) for i in range(round(depth * layers))]  # BertEncoder.forward
            assert list(kept_layers(layers, depth)) == released
    assert kept_layers(12, 0.5) == (0, 2, 4, 6, 8, 10)
    assert kept_layers(12, 0.75) == (0, 1, 2, 4, 5, 6, 8, 9, 10)
    assert kept_layers(6, 0.75) == (0, 1, 2, 4)  # round(4.5) = 4, Python's half-to-even as released
    assert [kept_heads(12, w) for w in WIDTHS] == [3, 6, 9, 12]
    assert [kept_ffn(3072, 12, w) for w in WIDTHS] == [768, 1536, 2304, 3072]
    assert [kept_ffn(1536, 12, w) for w in WIDTHS] == [384, 768, 1152, 1536]  # all-MiniLM-L6-v2
    with pytest.raises(ConfigError, match="depth multiplier"):
        kept_layers(12, 0.0)


# ----------------------------------------------------------------------------------------- rewiring

def test_rewiring_keeps_the_function_and_sorts_by_importance():
    """Tolerance: 1e-5 absolute on float32 logits (only the summation order of the matmuls changes)."""
    model, data = tiny_bert(), Split()
    before = model(**inputs(data.batch(range(len(data))))).logits
    heads, neurons = importance(model, data, regression=False, batch_size=8)
    orders = reorder(model, heads, neurons)
    after = model(**inputs(data.batch(range(len(data))))).logits
    assert torch.allclose(before, after, atol=1e-5, rtol=0)
    assert any(order != sorted(order) for order in orders["heads"] + orders["ffn"])  # a real permutation happened
    heads2, neurons2 = importance(model, data, regression=False, batch_size=8)
    for layer in range(4):
        assert torch.allclose(heads2[layer], heads[layer][orders["heads"][layer]], rtol=1e-4, atol=1e-9)
        assert torch.all(heads2[layer][:-1] >= heads2[layer][1:] - 1e-9)
        assert torch.all(neurons2[layer][:-1] >= neurons2[layer][1:] - 1e-9)


def test_importance_equals_finite_differences_of_the_loss():
    """Head h: |dL/dm_h| with m_h scaling the head's attention output; FFN neuron i: |d/da L(a W1[i], a b1[i])|
    + |d/db L(b W2[:, i])| at a = b = 1 (first-order Taylor), one batch, float64, central differences."""
    model, data = tiny_bert(dtype=torch.float64), Split(size=8)
    heads, neurons = importance(model, data, regression=False, batch_size=8)
    batch = data.batch(range(8))

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(**inputs(batch)).logits, batch["labels"]))

    eps = 1e-6
    layer = model.bert.encoder.layer[1]
    for head in (0, 3):
        units = slice(head * 8, head * 8 + 8)
        dense = layer.attention.output.dense.weight
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                dense[:, units] *= 1 + sign * eps
            values.append(loss())
            with torch.no_grad():
                dense[:, units] /= 1 + sign * eps
        assert abs((values[0] - values[1]) / (2 * eps)) == pytest.approx(float(heads[1, head]), rel=1e-4)
    w1, w2 = layer.intermediate.dense, layer.output.dense
    for neuron in (0, 17):
        into, out = [], []
        for sign in (1, -1):
            with torch.no_grad():
                w1.weight[neuron] *= 1 + sign * eps
                w1.bias[neuron] *= 1 + sign * eps
            into.append(loss())
            with torch.no_grad():
                w1.weight[neuron] /= 1 + sign * eps
                w1.bias[neuron] /= 1 + sign * eps
                w2.weight[:, neuron] *= 1 + sign * eps
            out.append(loss())
            with torch.no_grad():
                w2.weight[:, neuron] /= 1 + sign * eps
        expected = abs((into[0] - into[1]) / (2 * eps)) + abs((out[0] - out[1]) / (2 * eps))
        assert expected == pytest.approx(float(neurons[1][neuron]), rel=1e-4)


# ----------------------------------------------------------------------------------------- export

def test_full_width_and_depth_is_exactly_the_teacher():
    model = tiny_bert()
    batch = inputs(Split().batch(range(6)))
    small = dynamic.export(model, SubNet(1.0, 1.0))
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vocab_size"):
        assert getattr(small.config, key) == getattr(model.config, key)
    assert small.config.attention_head_size == 8
    full, exported = model.state_dict(), small.state_dict()
    assert full.keys() == exported.keys()
    assert all(torch.equal(full[k], exported[k]) for k in full)
    assert torch.equal(dynamic.forward(model, SubNet(1.0, 1.0), batch).logits, model(**batch).logits)
    assert torch.equal(small(**batch).logits, model(**batch).logits)


def test_every_export_has_the_formula_parameter_count_and_the_dynamic_logits():
    model, batch = tiny_bert(), inputs(Split().batch(range(6)))
    for subnet in grid(WIDTHS, DEPTHS):
        small = dynamic.export(model, subnet)
        shape = subnet.shape(model.config)
        assert (small.config.num_attention_heads, small.config.intermediate_size, small.config.num_hidden_layers) == (
            shape["heads"], shape["ffn"], len(shape["layers"]))
        assert dynamic.numel(small) == param_count(model.config, subnet)
        assert torch.allclose(small(**batch).logits, dynamic.forward(model, subnet, batch).logits, atol=1e-6, rtol=0)
    # the formula at full width is the stock BERT's count at each depth (an independent count)
    for depth in DEPTHS:
        stock = BertForSequenceClassification(BertConfig(**{**model.config.to_dict(), "num_hidden_layers": len(kept_layers(4, depth))}))
        assert param_count(model.config, SubNet(1.0, depth)) == sum(p.numel() for p in stock.parameters())


def test_export_loads_with_auto_model_in_a_fresh_process(tmp_path):
    model, batch = tiny_bert(), inputs(Split().batch(range(4)))
    subnet = SubNet(0.5, 0.75)
    dynamic.save_export(dynamic.export(model, subnet), None, tmp_path / "small")
    torch.save({"batch": batch, "logits": dynamic.forward(model, subnet, batch).logits.detach()}, tmp_path / "expected.pt")
    script = (
        "import sys, torch; from transformers import AutoModelForSequenceClassification as A\n"
        "m = A.from_pretrained(sys.argv[1], trust_remote_code=True).eval(); e = torch.load(sys.argv[2])\n"
        "assert 'ckd' not in sys.modules, 'loaded through ckd'\n"
        "assert (m.config.num_attention_heads, m.config.intermediate_size, m.config.num_hidden_layers) == (2, 24, 3)\n"
        "print(float((m(**e['batch']).logits - e['logits']).abs().max()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "small"), str(tmp_path / "expected.pt")],
                          capture_output=True, text=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-6


# ----------------------------------------------------------------------------------------- stage losses

def soft_cross_entropy(predicts, targets):  # DynaBERT/run_glue.py
    return -(F.softmax(targets, dim=-1) * F.log_softmax(predicts, dim=-1)).sum(dim=-1).mean()


def dynabert_config(**extra):
    return resolve(None, ["task=syn-pair", "method=dynabert", *[f"{k}={json.dumps(v)}" for k, v in extra.items()]])


@pytest.mark.parametrize("stage", ["width", "depth"])
def test_dynabert_stage_loss_is_the_released_loss(stage):
    """width: sum over widths of soft CE + 0.1 * sum of MSE over all hidden states vs the fixed teacher;
    depth: sum over (width, depth) of soft CE + 1.0 * sum of MSE of state k vs teacher state kept[k] (and
    last vs last), the teacher (DynaBERT_W) at the same width."""
    config = dynabert_config(widths=[0.5, 1.0], depths=list(DEPTHS))
    method = stage_method(config, stage, "syn-pair")
    student, teacher = tiny_bert(0).train(), tiny_bert(1)
    torch.manual_seed(0)
    subnets = grid([0.5, 1.0], [1.0] if stage == "width" else DEPTHS)  # 4 layers at 0.75 keep 0, 1, 2
    objective = StageObjective(method, student.config, subnets, regression=False)
    batch = Split().batch(range(8))
    student.eval()  # no dropout: the reference re-runs the forwards
    loss, _ = make_stage_loss(stage, objective, student, teacher, "same")(batch)
    lam = 0.1 if stage == "width" else 1.0
    expected = 0.0
    for subnet in subnets:
        s = dynamic.forward(student, subnet, inputs(batch), hidden=True)
        t = dynamic.forward(teacher, SubNet(subnet.width if stage == "depth" else 1.0, 1.0), inputs(batch), hidden=True)
        kept = [math.floor(i / subnet.depth) for i in range(round(subnet.depth * 4))] + [4]
        rep = sum(F.mse_loss(sr, t.hidden_states[i]) for sr, i in zip(s.hidden_states, kept))
        expected = expected + soft_cross_entropy(s.logits, t.logits) + lam * rep
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_ckd_objective_maps_kept_student_layers_uniformly():
    config = dynabert_config(method="dynabert-ckd", widths=[1.0], depths=[0.5, 0.75, 1.0])
    method = stage_method(config, "depth", "syn-pair")
    model = tiny_bert(layers=6)
    objective = StageObjective(method, model.config, grid([1.0], [0.5, 0.75, 1.0]), regression=False)
    maps = objective.layer_maps()
    assert maps["w1-d1"]["pairs"] == [[i, i] for i in range(7)]
    assert maps["w1-d0.5"]["pairs"] == [[0, 0], [2, 1], [4, 2], [6, 3]]        # 6 -> 3, g = 3
    assert maps["w1-d0.75"]["pairs"] == [[0, 0], [3, 2], [6, 4]]               # 6 -> 4, g = 2
    assert {t.name for t in method.terms} == {"kd_released", "wr_pair", "wr_triple", "ltr_pair", "ltr_triple"}


# ----------------------------------------------------------------------------------------- the chain

QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "data.max_length=24"]
DATA = ["task=syn-pair", "data.synthetic_train_size=96", "data.synthetic_dev_size=32"]
SMALL = ["widths=[0.5,1.0]", "depths=[0.5,1.0]", "train.batch_size=16", "train.epochs=1", "train.lr=1e-3",
         "train.checkpoint_every=2", "train.eval_every=100"]


@pytest.fixture(scope="module")
def rewired(tmp_path_factory) -> tuple[Path, Path]:
    from ckd.config import resolve_config
    from ckd.runs import execute

    root = tmp_path_factory.mktemp("dynabert")
    model = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 48, "layers": 4}
    execute("finetune", resolve_config("finetune", None, [
        *DATA, *QUIET, f"output_dir={root / 'teacher'}", *[f"model.{k}={v}" for k, v in model.items()],
        "train.batch_size=16", "train.epochs=2", "train.lr=1e-3"]))
    record = rewire(resolve(None, [*DATA, *QUIET, f"teacher.name_or_path={root / 'teacher' / 'model'}", f"output_dir={root / 'rewired'}"]))
    assert record["max_logit_change"] < 1e-5
    return root / "teacher" / "model", root / "rewired" / "model"


def stage_args(stage: str, method: str, teacher: Path, student: Path, out: Path) -> list[str]:
    return [*DATA, *QUIET, *SMALL, f"method={method}", f"teacher.name_or_path={teacher}", f"student.name_or_path={student}",
            f"output_dir={out}"]


@pytest.mark.parametrize("method", ["dynabert", "dynabert-ckd"])
def test_width_then_depth_then_evaluate_and_export(rewired, tmp_path, method):
    teacher, start = rewired
    width = train_stage("width", resolve(None, stage_args("width", method, teacher, start, tmp_path / "width")))
    assert [s["tag"] for s in width["subnets"]] == ["w1-d1", "w0.5-d1"]
    depth_model = tmp_path / "width" / "model"
    depth = train_stage("depth", resolve(None, stage_args("depth", method, depth_model, depth_model, tmp_path / "depth")))
    assert [s["tag"] for s in depth["subnets"]] == ["w1-d1", "w0.5-d1", "w1-d0.5", "w0.5-d0.5"]
    terms = depth["history"][-1]["loss_terms"]
    assert {k.split("/")[0] for k in terms} == {"w1-d1", "w0.5-d1", "w1-d0.5", "w0.5-d0.5"}
    assert all(math.isfinite(v) for v in terms.values())
    assert depth["steps"] == width["steps"] == 6
    common = [*DATA, *QUIET, "widths=[0.5,1.0]", "depths=[0.5,1.0]", f"model.name_or_path={tmp_path / 'depth' / 'model'}",
              "latency.repeats=2", "latency.warmup=0"]
    scores = evaluate_subnets(resolve(None, common), tmp_path / "eval.json")
    assert len(scores["subnets"]) == 4 and all(0.0 <= r["score"] <= 1.0 for r in scores["subnets"])
    sizes = export_subnets(resolve(None, common), tmp_path / "export")
    by_tag = {r["tag"]: r for r in sizes["subnets"]}
    assert by_tag["w0.5-d0.5"]["params"] < by_tag["w1-d0.5"]["params"] < by_tag["w1-d1"]["params"]
    assert all(r["max_logit_difference"] <= 1e-6 and r["latency_ms"] > 0 for r in sizes["subnets"])
    assert (tmp_path / "export" / "w0.5-d0.5" / "dynabert_bert.py").is_file()


# ----------------------------------------------------------------------------------------- kill -9

@pytest.mark.slow
@pytest.mark.parametrize("stage", ["width", "depth"])
def test_stage_killed_mid_training_resumes_exactly(rewired, tmp_path, stage):
    teacher, start = rewired
    if stage == "depth":
        base = tmp_path / "width"
        train_stage("width", resolve(None, stage_args("width", "dynabert-ckd", teacher, start, base)))
        teacher = start = base / "model"
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train_stage(stage, resolve(None, stage_args(stage, "dynabert-ckd", teacher, start, reference)))
    args = ["dynabert", f"train-{stage}", *stage_args(stage, "dynabert-ckd", teacher, start, resumed)]
    killed = run_and_stop(args, "train-step", 5)  # steps 1..5 done, checkpoint at step 4
    assert killed.returncode == -9 and not (resumed / "record.json").exists()
    finished = Child(args).finish()
    assert finished.returncode == 0 and "from step 4/6" in finished.output, finished.output
    assert (reference / "model" / "model.safetensors").read_bytes() == (resumed / "model" / "model.safetensors").read_bytes()
    a, b = (json.loads((d / "record.json").read_text()) for d in (reference, resumed))
    assert a["history"] == b["history"] and a["config_fingerprint"] == b["config_fingerprint"]
    assert not (resumed / "checkpoints").exists()


# ----------------------------------------------------------------------------------------- tables, workflow

def _write_study(study: Path, scores: dict) -> None:
    """scores: {(objective, seed): {(width, depth): accuracy}} as eval/seed<k>.json and export/.../sizes.json."""
    from ckd import paths

    for (objective, seed), cells in scores.items():
        key = {"task": "sst2", "teacher": "t", "objective": objective, "seed": seed}
        rows = [{"width": w, "depth": d, "tag": SubNet(w, d).tag, "score": acc, "score_metric": "accuracy", "params": int(1e6 * w * d)}
                for (w, d), acc in cells.items()]
        path = study / paths.DYNABERT_EVAL.format(**key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"subnets": rows}))
        export = study / paths.DYNABERT_EXPORT.format(**key)
        export.mkdir(parents=True)
        (export / "sizes.json").write_text(json.dumps({"subnets": [{"tag": r["tag"], "latency_ms": 2.0 * r["width"]} for r in rows]}))


def test_report_gives_means_over_seeds_and_paired_ckd_differences(tmp_path):
    import csv

    from ckd.dynabert.report import write_report

    _write_study(tmp_path, {
        ("dynabert", 1): {(1.0, 1.0): 0.90, (0.5, 1.0): 0.80},
        ("dynabert", 2): {(1.0, 1.0): 0.88, (0.5, 1.0): 0.70},
        ("dynabert-ckd", 1): {(1.0, 1.0): 0.91, (0.5, 1.0): 0.85},
        ("dynabert-ckd", 2): {(1.0, 1.0): 0.88, (0.5, 1.0): 0.74},
    })
    written = write_report(tmp_path, tmp_path / "out")
    assert {p.name for p in written} >= {"sst2.csv", "sst2.md", "sst2_score_vs_params.png"}
    rows = {(r["objective"], float(r["width"])): r for r in csv.DictReader((tmp_path / "out" / "sst2.csv").open())}
    half = rows[("dynabert-ckd", 0.5)]
    assert float(half["score_mean"]) == pytest.approx(79.5)
    assert float(half["score_std"]) == pytest.approx(math.sqrt(((85 - 79.5) ** 2 + (74 - 79.5) ** 2) / 1))
    assert float(half["ckd_minus_dynabert_mean"]) == pytest.approx(4.5)           # differences 5 and 4
    assert float(half["ckd_minus_dynabert_std"]) == pytest.approx(math.sqrt(0.5))
    assert half["params"] == "500000" and float(half["latency_ms"]) == pytest.approx(1.0)
    assert rows[("dynabert", 0.5)]["ckd_minus_dynabert_mean"] == ""
    assert "| 1 | 89.0 ± 1.4 | 75.0 ± 7.1 |" in (tmp_path / "out" / "sst2.md").read_text()
    from ckd import paths  # the study's own tables (ckd aggregate) leave the DynaBERT records out

    assert not paths.is_tabulated(tmp_path / "dynabert/sst2/t/dynabert/width/seed1/record.json", tmp_path)


def test_study_with_a_dynabert_section_plans_every_stage(tmp_path):
    from tests.conftest import job_counts, snakemake

    study = tmp_path / "study.yaml"
    text = (Path(__file__).resolve().parent.parent / "config" / "smoke.yaml").read_text()
    study.write_text(text + "\ndynabert:\n  objectives: [dynabert, dynabert-ckd]\n  widths: [0.5, 1.0]\n  depths: [0.5, 1.0]\n")
    planned = snakemake("-n", "--configfile", str(study), "--config", f"results_dir={tmp_path}")
    assert planned.returncode == 0, planned.stdout[-3000:]
    jobs = job_counts(planned.stdout)
    # smoke: 2 tasks, 2 seeds, one teacher seed; per task 1 rewire, 2 objectives x 2 seeds of each stage
    assert {k: v for k, v in jobs.items() if k.startswith("dynabert")} == {
        "dynabert_rewire": 2, "dynabert_width": 8, "dynabert_depth": 8, "dynabert_evaluate": 8, "dynabert_export": 8,
        "dynabert_report": 1}
