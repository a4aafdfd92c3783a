"""General (task-agnostic) distillation: a pre-trained teacher's knowledge moved into a student on unlabelled
text (a packed corpus, ckd.corpus), before any task. `ckd general-distill` (rule `general_distill`) writes a
run folder whose model/ a task run then starts from (regime "task-agnostic": fine-tuned; "general+task":
task-distilled as well). Methods are data: ckd/resources/general_methods.yaml.
"""
