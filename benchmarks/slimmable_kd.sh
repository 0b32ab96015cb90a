#!/usr/bin/env bash
# AlphaNet's Tables 1-2 on the small slimmable space: no KD, KL-KD at T = 0.5 / 1 / 2 / 4 and adaptive KD,
# one seed, EPOCHS epochs each, then test top-1 at 0.25x..0.75x (step 0.05) and 1.0x. Resumable: a killed
# run continues from its checkpoint when the script runs again; finished runs are skipped.
# Usage: bash benchmarks/slimmable_kd.sh [RUNS_DIR] [EPOCHS]    (writes benchmarks/results/slimmable_kd/)
set -euo pipefail
runs=${1:-runs/slimmable_kd}
epochs=${2:-5}
results=benchmarks/results/slimmable_kd
mkdir -p "$runs" "$results"
recipes=(
  "nokd configs/slimmable_nokd.yaml"
  "kl_t0.5 configs/slimmable_kl.yaml distill.options.temperature=0.5"
  "kl_t1 configs/slimmable_kl.yaml"
  "kl_t2 configs/slimmable_kl.yaml distill.options.temperature=2"
  "kl_t4 configs/slimmable_kl.yaml distill.options.temperature=4"
  "adaptive configs/slimmable_adaptive.yaml"
)
for line in "${recipes[@]}"; do
  read -r name config extra <<<"$line"
  dir=$runs/$name
  sets=(--set "train.epochs=$epochs" --set train.diagnostic_draws=0)
  [[ -n ${extra:-} ]] && sets+=(--set "$extra")
  start=$(date +%s)
  if [[ -f $dir/config.yaml ]]; then
    supernet train --resume "$dir" --no-progress
  else
    supernet train "$config" --out "$dir" "${sets[@]}" --no-progress
  fi
  echo "$name: $(( $(date +%s) - start )) s"
  supernet eval "$dir" --widths 0.25:0.75:0.05,1.0 --split test --json >"$results/$name.json"
done
python - "$results" <<'PY'
import json, sys
from pathlib import Path

results = Path(sys.argv[1])
rows = {p.stem: json.loads(p.read_text())["widths"] for p in sorted(results.glob("*.json"))}
order = [n for n in ("nokd", "kl_t0.5", "kl_t1", "kl_t2", "kl_t4", "adaptive") if n in rows]
widths = [w["width"] for w in rows[order[0]]]
print("| recipe | " + " | ".join(f"{w:g}x" for w in widths) + " | mean |")
print("|---|" + "---:|" * (len(widths) + 1))
for n in order:
    accs = [100 * w["top1"] for w in rows[n]]
    print(f"| {n} | " + " | ".join(f"{a:.1f}" for a in accs) + f" | {sum(accs) / len(accs):.2f} |")
PY
