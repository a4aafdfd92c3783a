"""Unlabelled text for general (task-agnostic) distillation: where it comes from (`sources`), how it is
tokenised once into packed, sharded, memory-mapped token arrays (`pack`), and how a run reads them (`packed`).

A study's `corpus:` section names corpora; each is a list of sources (ckd.corpus.sources). `ckd pack-corpus`
(rule `pack_corpus`) tokenises a corpus once per (corpus, tokenizer, max_length) into a folder:

    manifest.json           format, key (fingerprint of spec + source stamps + tokenizer + max_length), counts
    tokens-00000.npy ...    (n_i, max_length) token ids ([CLS] text [SEP] then padding), uint16 or int32
    lengths-00000.npy ...   (n_i,) valid tokens per row (uint16)

`general-distill` opens the folder read-only with numpy memory maps (ckd.corpus.packed).
"""
