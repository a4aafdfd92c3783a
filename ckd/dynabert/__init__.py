"""DynaBERT (Hou et al., NeurIPS 2020) in the suite: a width- and depth-adaptive view of a Hugging Face BERT
classifier, network rewiring, the two distillation stages with DynaBERT's or CKD's objective, export of
sub-networks as standalone smaller models, and their tables. docs/dynabert.md describes it.

Modules: subnet (what a (width, depth) keeps, parameter count), dynamic (run / export a sub-network),
hf_model (the exported model's class), rewire (importance and reordering), objective (a stage's loss),
stages (the runs), config (their config), report (tables and plots).
"""
