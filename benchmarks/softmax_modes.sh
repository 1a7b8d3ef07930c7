#!/usr/bin/env bash
# `rifscale run` of a softmax corpus (2e5 x 384, K = 10, _synth.py seed 2026, float32) on an
# external dask cluster (scheduler + 2 workers x 1 thread, 127.0.0.1) and on threads, one run
# each, same corpus. Needs `make .venv-run/.installed`. Usage: bash benchmarks/softmax_modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TMPDIR:-/tmp}/rifscale-softmax-modes; rm -rf $T; mkdir -p $T
.venv-run/bin/python - <<PY
import sys; sys.path.insert(0, "benchmarks")
import rifscale
from _synth import synthetic_split, N_TEST
X, y = synthetic_split(200_000, 384, seed=2026, split="train", classes=10)
Xt, yt = synthetic_split(N_TEST, 384, seed=2026, split="test", classes=10)
rifscale.ingest("$T/c.zarr", train_X=X, train_y=y, test_X=Xt, test_y=yt)
PY
.venv-run/bin/dask scheduler --host 127.0.0.1 --port 0 --scheduler-file $T/s.json --no-dashboard > $T/sched.log 2>&1 &
SP=$!
sleep 3
DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=100ms .venv-run/bin/dask worker --scheduler-file $T/s.json --nthreads 1 --nworkers 2 --no-dashboard > $T/work.log 2>&1 &
WP=$!
sleep 5
for mode in cluster threads; do
  extra=""; [ $mode = cluster ] && extra="--scheduler $T/s.json"
  s=$(date +%s.%N)
  .venv-run/bin/rifscale run $T/c.zarr --out $T/run-$mode --lam 1 -q $extra
  e=$(date +%s.%N)
  python3 -c "
import json; m=json.load(open('$T/run-$mode/manifest.json'))
print('$mode', round($e-$s,1), 's wall; timings', {k: round(v,1) for k,v in m.get('timings',{}).items()}, 'model', m.get('model'), 'fit', m['fit']['n_passes'], m['fit']['stopped_at'])"
done
kill $WP $SP || true
