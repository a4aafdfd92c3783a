"""Why `ckd-ltr` collapses to one class in the smoke study (docs/analysis/ltr-collapse.md).

Runs the smoke setting of syn-sentiment (seed 1): the tiny-4L teacher, then 2-layer students with
kd, ckd, ckd-ltr, ckd-ltr without gradient clipping, ckd-ltr with only the LTR pair term, and ckd-ltr
from a truncated (not random) student; prints each student's dev accuracy, its prediction counts,
how much its [CLS] vector varies across dev sentences per layer, and the mean cosine between its
mapped layers. About 4 minutes on one CPU core.

    python docs/analysis/ltr_collapse.py [WORK_DIR]
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import torch

from ckd.cli import main as ckd
from ckd.data.encoding import encode_split
from ckd.data.loading import load_split
from ckd.models import build_model, load_tokenizer

SMOKE = ["task=syn-sentiment", "data.source=synthetic", "data.max_length=32", "data.synthetic_train_size=1000",
         "data.synthetic_dev_size=300", "train.lr=1e-3", "train.batch_size=16", "train.warmup_ratio=0.1",
         "train.tensorboard=false", "train.progress=false", "train.threads=1", "seed=1"]
SHAPE = {"init": "random", "tokenizer": "synthetic", "layers": 2, "hidden": 64, "heads": 4, "ffn": 256}
STUDENTS = {
    "kd": ["method=kd"],
    "ckd": ["method=ckd"],
    "ckd-ltr": ["method=ckd-ltr"],
    "ckd-ltr, no clipping": ["method=ckd-ltr", "train.max_grad_norm=0"],
    "ckd-ltr, LTR pair only": ["method=ckd-ltr", "method_options.ltr_triple=0"],
    "ckd-ltr, truncated student": ["method=ckd-ltr", "student.init=truncate", "student.layers=2"],
}


def _spec(args: list[str], teacher: Path) -> list[str]:
    if "student.init=truncate" in args:
        return [f"student.name_or_path={teacher}"]
    return [f"student.{key}={value}" for key, value in SHAPE.items()]


def train_teacher(work: Path) -> Path:
    """Fine-tune the smoke study's tiny-4L teacher from scratch into WORK/teacher; returns its model folder."""
    shape = [f"model.{key}={value}" for key, value in {**SHAPE, "layers": 4}.items()]
    assert ckd(["finetune", *SMOKE, *shape, "train.epochs=6", f"output_dir={work / 'teacher'}"]) in (0, None)
    return work / "teacher" / "model"


def distill_args(args: list[str], teacher: Path, out: Path, epochs: int = 3) -> list[str]:
    """`ckd distill` arguments for a student of STUDENTS (`args`) in the smoke setting, from the teacher model folder."""
    return [*SMOKE, *args, *_spec(args, teacher), f"teacher.name_or_path={teacher}", f"train.epochs={epochs}",
            "use_task_settings=false", f"output_dir={out}"]


def main(work: Path) -> None:
    torch.set_num_threads(1)
    teacher = train_teacher(work).parent
    dev = load_split("syn-sentiment", "dev", source="synthetic", synthetic_sizes={"train": 1000, "dev": 300})
    batch = encode_split(dev, load_tokenizer(SHAPE), 32, "syn-sentiment").batch(list(range(len(dev))))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    valid = batch["attention_mask"].bool()
    rows = [("teacher", teacher / "model", (0, 2, 4)), ("random 2-layer student (init)", None, (0, 1, 2))]
    for name, args in STUDENTS.items():
        out = work / name.replace(" ", "_").replace(",", "")
        assert ckd(["distill", *distill_args(args, teacher / "model", out)]) in (0, None)
        rows.append((name, out / "model", (0, 1, 2)))
    print(f"{'model':28s} {'dev acc':>7s}  {'predictions':18s} {'[CLS] spread L0/L1/L2':24s} mean cos(h0,h1) cos(h0,h2) cos(h1,h2)")
    for name, folder, layers in rows:
        if folder is None:
            model = build_model(SHAPE, task="syn-sentiment", role=name, seed=1).model.eval()
            accuracy, counts = float("nan"), "-"
        else:
            model = build_model({"name_or_path": str(folder)}, task="syn-sentiment", head="trained", role=name).model.eval()
            record = json.loads((folder.parent / "record.json").read_text())
            accuracy = record["metrics"]["final"]["dev"]["accuracy"]
            counts = dict(collections.Counter(json.loads((folder.parent / "predictions.json").read_text())["dev"]["final"]))
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        # spread: norm of the per-dimension std of the [CLS] vector across sentences / norm of its mean
        spread = [float(hidden[i][:, 0].std(0).norm() / hidden[i][:, 0].mean(0).norm()) for i in layers]
        cos = [float(torch.nn.functional.cosine_similarity(hidden[a], hidden[b], dim=-1)[valid].mean())
               for a, b in ((layers[0], layers[1]), (layers[0], layers[2]), (layers[1], layers[2]))]
        print(f"{name:28s} {100 * accuracy:7.1f}  {str(counts):18s} {'/'.join(f'{s:.3f}' for s in spread):24s} "
              + "  ".join(f"{c:.3f}" for c in cos))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ltr-collapse-")))
