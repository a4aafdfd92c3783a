#!/bin/bash
# Why every CKD variant of config/glue-minilm.yaml ends at the majority class on SST-2 (README, "Results on
# real GLUE"): two runs of seed 1 with the study's data, student and training settings that separate CKD's
# relation terms from its logit settings.
#   kd-at-ckd-settings  KD alone with CKD's SST-2 alpha 0.9, T 4, lr 4e-5 (no relation terms)
#   ckd-at-kd-settings  full CKD with its SST-2 relation weights (pair 100, triple 1000) and KD's alpha 0.5,
#                       T 10, lr 5e-5
# Needs the study's SST-2 teacher: `snakemake --cores 2 --configfile config/glue-minilm.yaml
# results/glue-minilm/teachers/sst2/minilm-l6/seed1/teacher_cache/manifest.json` re-creates it (and its
# caches). Run from the repository root with GLUE_DIR set; about 4 minutes on 2 CPU cores. Prints each run's
# dev accuracy and loss terms per epoch.
set -euo pipefail
teacher=results/glue-minilm/teachers/sst2/minilm-l6/seed1
out=${1:-results/glue-minilm-diagnostics}
source "$(dirname "$0")/glue_minilm_run.sh"
common=("${glue_minilm_run[@]}" task=sst2 seed=1 "teacher={\"name_or_path\": \"$teacher/model\"}")
ckd distill "${common[@]}" output_dir="$out/kd-at-ckd-settings" method=kd teacher_logits="$teacher/train_logits.pt" \
  'method_options={alpha: 0.9, temperature: 4, lr: 4.0e-5}'
ckd distill "${common[@]}" output_dir="$out/ckd-at-kd-settings" method=ckd teacher_cache="$teacher/teacher_cache" \
  'method_options={alpha: 0.5, temperature: 10, lr: 5.0e-5}'
for run in kd-at-ckd-settings ckd-at-kd-settings; do
  python - "$out/$run/record.json" <<'EOF'
import json
import sys

record = json.load(open(sys.argv[1]))
for entry in record["history"]:
    terms = ", ".join(f"{name} {value:.4f}" for name, value in entry["loss_terms"].items())
    print(f"{sys.argv[1]}: epoch {entry['epoch']:.0f} dev accuracy {100 * entry['dev']['dev']['accuracy']:.1f} | {terms}")
EOF
done
