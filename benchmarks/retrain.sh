#!/usr/bin/env bash
# After the supernet: the 0.5x network of the slimmable no-KD run (benchmarks/slimmable_kd.sh) used as
# inherited (no training), fine-tuned, retrained from scratch, distilled from the run's 1.0x network with
# KL (AlphaNet Appendix C) and adaptive KD from scratch, and transferred to a 5-class subset with a frozen
# or a trained backbone. Writes benchmarks/results/retrain/*.json and prints a table. Finished runs are
# skipped; a killed one continues (`--resume`) when the script runs again.
# Usage: bash benchmarks/retrain.sh [SLIM_RUNS_DIR] [RUNS_DIR] [EPOCHS]
set -euo pipefail
slim=${1:-runs/slimmable_kd}
runs=${2:-runs/retrain}
epochs=${3:-2}
results=benchmarks/results/retrain
source_run=$slim/nokd
mkdir -p "$runs" "$results"
if [[ ! -f $source_run/checkpoints/latest.pt ]]; then
  supernet train configs/slimmable_nokd.yaml --out "$source_run" --set train.epochs=5 --set train.diagnostic_draws=0 \
    --no-progress
fi
for width in 0.5 1.0; do
  [[ -f $runs/export_${width}x/arch.json ]] || supernet export "$source_run" --arch "${width}x" --out "$runs/export_${width}x" --no-onnx
done
student=$runs/export_0.5x
teacher=$runs/export_1.0x
go() {  # NAME COMMAND...: run (or resume) a fine-tune / distill into RUNS/NAME, time it, keep its card
  local name=$1 command=$2
  shift 2
  local start
  start=$(date +%s)
  if [[ -f $runs/$name/export/arch.json ]]; then
    :
  elif [[ -f $runs/$name/config.yaml ]]; then
    supernet "$command" --resume "$runs/$name" --no-progress --no-onnx
  else
    supernet "$command" "$@" --out "$runs/$name" --no-progress --no-onnx
  fi
  echo "$name: $(( $(date +%s) - start )) s"
  cp "$runs/$name/export/arch.json" "$results/$name.json"
}
go finetune finetune "$student" --epochs "$epochs"
# the no-KD control of the two distillations: their recipe's settings (lr, data, no dropout), labels only
go from_scratch finetune "$student" --epochs "$epochs" --from-scratch --config configs/distill_kl.yaml
go distill_kl distill "$student" --from-scratch --teacher "$teacher" --config configs/distill_kl.yaml --epochs "$epochs"
go distill_adaptive distill "$student" --from-scratch --teacher "$teacher" --config configs/distill_adaptive.yaml \
  --epochs "$epochs"
go transfer_frozen finetune "$student" --epochs 1 --classes 0,1,2,3,4 --freeze-backbone
go transfer_full finetune "$student" --epochs 1 --classes 0,1,2,3,4
cp "$student/arch.json" "$results/inherited.json"
python - "$results" <<'PY'
import json, sys
from pathlib import Path

results = Path(sys.argv[1])
print("| network | how | test top-1 | before |")
print("|---|---|---:|---:|")
for name in ("inherited", "finetune", "from_scratch", "distill_kl", "distill_adaptive", "transfer_frozen", "transfer_full"):
    card = json.loads((results / f"{name}.json").read_text())["card"]
    lineage = card.get("lineage", {})
    how = lineage.get("method", "weights from the supernet, BN recalibrated")
    if "loss" in lineage:
        how += f" ({lineage['loss']})"
    if lineage.get("classes"):
        how += f", classes {lineage['classes']}" + (", frozen backbone" if lineage.get("freeze_backbone") else "")
    before = card.get("before", {}).get("top1")
    print(f"| {name} | {how} | {100 * card['test']['top1']:.2f} | {'-' if before is None else f'{100 * before:.2f}'} |")
PY
