#!/usr/bin/env bash
# One width's training through `ldmscale train`: one process x 2 threads vs torchrun
# 2 processes x 1 thread (data parallel, gloo). Prints img/s between the first and the last
# logged step of each run. Usage (from the repository root, after ./run.sh or setup):
#   benchmarks/bench_threads.sh outputs/study-tiny/runs/c32/train_config.json [STEPS]
set -euo pipefail
CFG="$1"; STEPS="${2:-100}"
PY="${PYTHON:-.venv/bin/python}"; TORCHRUN="$(dirname "$PY")/torchrun"
OUT="$(mktemp -d)"
for name in one_x2 two_x1; do
  "$PY" - "$CFG" "$OUT" "$name" "$STEPS" <<'PYCODE'
import json, sys
cfg, out, name, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
d = json.load(open(cfg))
d.update(steps=steps, eval_steps=[], checkpoint_every=10 * steps, log_every=20, run_dir=f"{out}/{name}")
json.dump(d, open(f"{out}/{name}.json", "w"))
PYCODE
done
OMP_NUM_THREADS=2 "$PY" -m ldmscale train --config "$OUT/one_x2.json" --no-progress > "$OUT/one_x2.log" 2>&1
OMP_NUM_THREADS=1 "$TORCHRUN" --nproc_per_node 2 -m ldmscale train --config "$OUT/two_x1.json" --no-progress > "$OUT/two_x1.log" 2>&1
for name in one_x2 two_x1; do
  "$PY" - "$OUT/$name/log.jsonl" "$name" <<'PYCODE'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
a, b = rows[0], rows[-1]
batch = b["images_seen"] // b["step"]
print(f"{sys.argv[2]}: {(b['step'] - a['step']) * batch / (b['wall_time'] - a['wall_time']):.1f} img/s "
      f"(steps {a['step']}-{b['step']}, batch {batch})")
PYCODE
done
