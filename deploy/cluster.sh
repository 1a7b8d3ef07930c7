#!/usr/bin/env bash
# Start or stop a Dask cluster of local processes for rifscale: one scheduler, N CPU workers
# (one thread each) and M GPU workers (one per device, advertising the GPU resource that
# rifscale pins the Hessian factorisation to).
#
#   deploy/cluster.sh start DIR [--workers N] [--gpu-workers M] [--host ADDR]
#   rifscale run corpus.zarr --out run --scheduler DIR/scheduler.json
#   deploy/cluster.sh stop DIR
#
# DIR receives scheduler.json, the process ids (pids) and one log per process.
# Run it on each node of a multi-node job with the same DIR on shared storage: the
# scheduler is started only where DIR/scheduler.json does not exist yet.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2
workers=1 gpu_workers=0 host=127.0.0.1
while [ $# -gt 0 ]; do
  case $1 in
    --workers) workers=$2; shift 2 ;;
    --gpu-workers) gpu_workers=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    *) usage ;;
  esac
done

case $cmd in
  start)
    mkdir -p "$dir"
    sched="$dir/scheduler.json"
    if [ ! -s "$sched" ]; then
      dask scheduler --host "$host" --port 0 --no-dashboard --scheduler-file "$sched" >"$dir/scheduler.log" 2>&1 &
      echo $! >>"$dir/pids"
      for _ in $(seq 1 300); do [ -s "$sched" ] && break; sleep 0.2; done
      [ -s "$sched" ] || { echo "scheduler did not start; see $dir/scheduler.log" >&2; exit 1; }
    fi
    for i in $(seq 1 "$workers"); do
      dask worker --scheduler-file "$sched" --host "$host" --nthreads 1 --no-dashboard \
        --name "cpu-$(hostname)-$i" >"$dir/worker-cpu-$i.log" 2>&1 &
      echo $! >>"$dir/pids"
    done
    for i in $(seq 0 $((gpu_workers - 1))); do
      CUDA_VISIBLE_DEVICES=$i dask worker --scheduler-file "$sched" --host "$host" --nthreads 1 \
        --no-dashboard --resources "GPU=1" --name "gpu-$(hostname)-$i" >"$dir/worker-gpu-$i.log" 2>&1 &
      echo $! >>"$dir/pids"
    done
    echo "cluster in $dir: scheduler file $sched, $workers CPU and $gpu_workers GPU worker(s)"
    ;;
  stop)
    [ -f "$dir/pids" ] || { echo "no $dir/pids: nothing to stop" >&2; exit 1; }
    pids=$(tac "$dir/pids")
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    for pid in $pids; do  # give each process 30 s to shut down cleanly, then kill it
      for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$dir/pids" "$dir/scheduler.json"
    echo "stopped the cluster in $dir"
    ;;
  *) usage ;;
esac
