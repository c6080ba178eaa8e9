#!/usr/bin/env bash
# Trainer speed against ../shared/reference/torch_fmnist_lt.py (PyTorch, in-memory arrays), alternating
# runs in one session (this machine is shared and noisy), same net (resnet8 = the reference's ResNet),
# batch 128, SGD momentum 0.9 cosine 0.05, weight decay 5e-4. Ours reads TFRecords of PNG bytes and
# augments (crop + flip); the reference does neither.
#   OUT: the table (default bench/results/speed_vs_reference.md)
#   TORCH_PYTHON: a python with torch and numpy (python3 -m venv /tmp/torchvenv &&
#                 /tmp/torchvenv/bin/pip install torch==2.13.0 numpy)
set -euo pipefail
cd "$(dirname "$0")/.."
E=${E:-4}; ROUNDS=${ROUNDS:-2}; TORCH_PYTHON=${TORCH_PYTHON:-/tmp/torchvenv/bin/python}
REF=${REF:-$(cd .. && pwd)/shared/reference}
if [ ! -f "$REF/torch_fmnist_lt.py" ]; then
  echo "error: $REF/torch_fmnist_lt.py not found: the PyTorch twin lives in the project's shared folder beside the" \
       "checkout (../shared/reference/), which a clone does not have; set REF=DIR to where it is" >&2
  exit 2
fi
FM=$(tools/env create)/usr/share/datasets/fashion-mnist
[ -d "$FM" ] || FM=/usr/share/datasets/fashion-mnist
out=${OUT:-bench/results/speed_vs_reference.md}
rows=()
for r in $(seq "$ROUNDS"); do
  ours=$(tools/env exec python bench/trainer_speed.py --epochs "$E" "$@" 2>/dev/null | tail -n1)
  rows+=("| $r | longtail-tfx Trainer, TFRecords of PNG + augmentation | $(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(f\"{d['images']} | {d['s_per_epoch']:.2f} | {d['images_per_s']:.0f}\")" "$ours") |")
  ref=$(cd "$REF" && E=$E FMNIST_DIR=$FM "$TORCH_PYTHON" torch_fmnist_lt.py ce 100 2>/dev/null | tail -n1)
  rows+=("| $r | PyTorch reference, in-memory arrays | $(python3 -c "import sys,re; s=sys.argv[1]; spe=float(re.search(r's/epoch ([0-9.]+)', s).group(1)); print(f'14886 | {spe:.2f} | {14886/spe:.0f}')" "$ref") |")
done
{
  echo "# Trainer speed vs the PyTorch reference"
  echo
  echo "Command: \`E=$E ROUNDS=$ROUNDS bench/speed_vs_reference.sh $*\`  "
  echo "Machine: $(hostname), $(nproc) CPUs, $(uname -sr); date $(date -u +%F)"
  echo
  echo "| round | runner | images | s/epoch | images/s |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  # the ratio of the medians over rounds: one noisy round (this machine is shared) moves it least
  printf '%s\n' "${rows[@]}" | python3 -c "
import statistics, sys
ips = {}
for line in sys.stdin:
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    ips.setdefault(cells[1].startswith('longtail'), []).append(float(cells[4]))
ours, ref = statistics.median(ips[True]), statistics.median(ips[False])
print(f'Median images/s over {len(ips[True])} rounds: ours {ours:.0f}, the reference {ref:.0f}: {ours / ref:.2f}x; '
      f'per round: ' + ', '.join(f'{o / r:.2f}x' for o, r in zip(ips[True], ips[False])) + '.')"
} > "$out"
cat "$out"
