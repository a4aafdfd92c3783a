#!/bin/bash
# Is CKD's STS-B gain over KD in config/glue-minilm.yaml (README, "Results on real GLUE") the relation terms or
# CKD's logit setting? Every CKD variant runs with the CKD authors' STS-B alpha 0.9 (T 1; lr 5e-5 and 4 epochs
# as `kd`), `kd` with its recipe's alpha 0.5 (T 10), and at STS-B weight 0.1 the weighted relation terms end
# near 0.2% of the loss. This runs KD alone at CKD's STS-B settings (no relation terms) for seeds 1-3 with the
# study's data, student and training settings, and prints each run's dev Spearman x100 per epoch.
# Needs the study's STS-B teacher and its logits: `snakemake --cores 2 --configfile config/glue-minilm.yaml
# results/glue-minilm/teachers/stsb/minilm-l6/seed1/train_logits.pt` re-creates them; or pass the study folder
# that holds them as $1. Run from the repository root with GLUE_DIR set; about 3 minutes a seed on 2 CPU cores.
set -euo pipefail
study=${1:-results/glue-minilm}
out=${2:-results/glue-minilm-diagnostics}
teacher=$study/teachers/stsb/minilm-l6/seed1
source "$(dirname "$0")/glue_minilm_run.sh"
for seed in 1 2 3; do
  ckd distill "${glue_minilm_run[@]}" task=stsb seed=$seed \
    "teacher={\"name_or_path\": \"$teacher/model\"}" teacher_logits="$teacher/train_logits.pt" \
    output_dir="$out/stsb-kd-at-ckd-settings/seed$seed" method=kd 'method_options={alpha: 0.9, temperature: 1}'
  python - "$out/stsb-kd-at-ckd-settings/seed$seed/record.json" <<'PY'
import json
import sys

record = json.load(open(sys.argv[1]))
for entry in {entry["epoch"]: entry for entry in record["history"]}.values():  # the final evaluation repeats the last epoch's
    print(f"{sys.argv[1]}: epoch {entry['epoch']:.0f} dev spearman {100 * entry['dev']['dev']['spearman']:.1f}")
PY
done
