"""Tokenise a split once (`encode_split`) and cut padded tensor batches from it (`EncodedSplit.batch`).

Pairs are encoded the way the tokenizer does for BERT ([CLS] a [SEP] b [SEP], token types 0 then
1), truncated 'longest_first' to `max_length`. Nothing is padded at encode time: each batch is
padded to its own longest row, which keeps short-sentence tasks cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ckd.data.examples import Example
from ckd.data.tasks import TaskSpec, get_task
from ckd.errors import DataError


@dataclass
class EncodedSplit:
    task: TaskSpec
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: torch.Tensor  # long (class index) or float32 (regression), one per example
    pad_token_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def width(self, indices: Iterable[int]) -> int:
        """The longest row among `indices` (tokens)."""
        return max((len(self.input_ids[int(i)]) for i in indices), default=0)

    def batch(self, indices: Iterable[int] | torch.Tensor, width: int | None = None) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids, labels, index.

        Rows are padded to `width` tokens, by default the longest row of this batch. The training loop
        pads every micro-batch of an optimiser step to the step's longest row, so that loss forms that
        count padded positions (TinyBERT's released losses) do not depend on how the step is split.
        """
        positions = [int(i) for i in (indices.flatten().tolist() if isinstance(indices, torch.Tensor) else indices)]
        longest = self.width(positions)
        if width is None:
            width = longest
        elif width < longest:
            raise ValueError(f"width {width} is shorter than the longest row ({longest} tokens)")
        input_ids = torch.full((len(positions), width), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(positions), width), dtype=torch.long)
        attention_mask = torch.zeros((len(positions), width), dtype=torch.long)
        for row, i in enumerate(positions):
            n = len(self.input_ids[i])
            input_ids[row, :n] = torch.tensor(self.input_ids[i], dtype=torch.long)
            token_type_ids[row, :n] = torch.tensor(self.token_type_ids[i], dtype=torch.long)
            attention_mask[row, :n] = 1
        index = torch.tensor(positions, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                "labels": self.labels[index], "index": index}


def encode_split(examples: list[Example], tokenizer, max_length: int, task: str | TaskSpec) -> EncodedSplit:
    """Tokenise all examples in one batched call of the (fast) tokenizer."""
    task = get_task(task)
    if tokenizer.pad_token_id is None:
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token "
                        f"before encoding")
    if max_length < (4 if task.is_pair else 3):
        raise DataError(f"max_length={max_length} is too short for {task.name}; use at least 16")
    texts_a = [ex.text_a for ex in examples]
    texts_b = None
    if task.is_pair:
        texts_b = [ex.text_b for ex in examples]
        missing = next((ex.guid for ex in examples if ex.text_b is None), None)
        if missing is not None:
            raise DataError(f"example {missing} of pair task {task.name} has no second text; "
                            f"load the data with the task's own reader")
    encoded = tokenizer(texts_a, texts_b, truncation="longest_first", max_length=max_length, padding=False,
                        return_token_type_ids=True, return_attention_mask=False)
    dtype = torch.float32 if task.is_regression else torch.long
    labels = torch.tensor([ex.label for ex in examples], dtype=dtype)
    return EncodedSplit(task=task, input_ids=list(encoded["input_ids"]),
                        token_type_ids=list(encoded["token_type_ids"]), labels=labels,
                        pad_token_id=int(tokenizer.pad_token_id), max_length=max_length)
