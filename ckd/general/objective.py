"""The general-distillation objective: the task objective's terms (relations, TinyBERT, MiniLM, cosine) plus
two masked-LM terms, on the masked positions a packed-corpus batch carries (ckd.corpus.packed).

    mlm      cross-entropy of the student's MLM logits against the original tokens
             (Devlin et al. 2019; DistilBERT's L_mlm)                       Normaliser: masked tokens
    mlm_kd   T^2 * KL(softmax(z_T/T) || softmax(z_S/T)) over the vocabulary at each masked position,
             averaged over masked positions: DistilBERT's L_ce (released distiller.py: KLDivLoss
             (reduction="batchmean") on the masked rows, times T^2)          Normaliser: masked tokens

`Outputs.logits` here are (M, V): the MLM head applied to the M masked positions only, in row-major order,
the same positions for teacher and student (`Batch.labels != -100`), so the vocabulary-wide logits of the
unmasked 85% are never computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.corpus.packed import IGNORE
from ckd.losses import logits as logit_losses
from ckd.objectives import TERMS, Objective, TermKind, _setting


def _masked_targets(batch) -> torch.Tensor:
    return batch.labels[batch.labels != IGNORE]


def _mlm(obj, term, batch, student, teacher):
    return F.cross_entropy(student.logits.float(), _masked_targets(batch).to(student.logits.device))


def _mlm_kd(obj, term, batch, student, teacher):
    return logit_losses.kd_loss(student.logits.float(), teacher.logits.float(), float(_setting(obj, term, "temperature")))


def _masked_tokens(obj, term, batch) -> torch.Tensor:
    return (batch.labels != IGNORE).sum()


MLM_TERMS = {
    "mlm": TermKind(_mlm, teacher=False, count=_masked_tokens),
    "mlm_kd": TermKind(_mlm_kd, count=_masked_tokens),
}
GENERAL_TERMS: dict[str, TermKind] = {**TERMS, **MLM_TERMS}
# terms that read MLM logits (the student's, and for mlm_kd the teacher's)
LOGIT_TERMS = frozenset(MLM_TERMS)


class GeneralObjective(Objective):
    """`ckd.objectives.Objective` knowing the masked-LM terms too."""

    term_kinds = GENERAL_TERMS

    @property
    def needs_mlm(self) -> bool:
        return any(term.name in LOGIT_TERMS for term, _ in self.terms)

    @property
    def teacher_mlm(self) -> bool:
        return any(term.name == "mlm_kd" for term, _ in self.terms)
