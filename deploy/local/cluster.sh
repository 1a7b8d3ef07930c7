#!/usr/bin/env bash
# Start or stop a Dask cluster of local processes for rifscale: one scheduler, N CPU workers
# (one thread each) and M GPU workers (one per device, advertising the GPU resource that
# rifscale pins the Hessian factorisation to).
#
#   deploy/local/cluster.sh start DIR [--workers N] [--gpu-workers M] [--host ADDR]
#                                     [--tls-dir TLS] [--timeout SECONDS]
#                                     [--dashboard-address ADDR:PORT]
#   rifscale run corpus.zarr --out run --scheduler DIR/scheduler.json
#   deploy/local/cluster.sh status DIR
#   deploy/local/cluster.sh stop DIR
#
# Everything listens on 127.0.0.1 unless --host names another address (the dashboard
# stays on 127.0.0.1:<random port> unless --dashboard-address says otherwise).
# --tls-dir TLS: TLS/ca.pem, TLS/cert.pem and TLS/key.pem (PEM) secure every connection
# (tls:// addresses, client certificates required); clients then need certificates
# signed by that CA (rifscale run ... --tls-ca-file --tls-cert --tls-key).
# start returns once the scheduler answers (it gets 120 s to start) and every worker it
# started has joined (--timeout, default 60 s); otherwise it stops what it started and
# exits 1.
#
# DIR receives scheduler.json and, per host, DIR/hosts/HOST/: one record per process
# (pid, start time, boot id, command line) and one log per process. stop signals only
# processes of this host whose start time and command line still match their record,
# so a pid reused by another process after a crash is never signalled. Run start on
# each node of a multi-node job with the same DIR on shared storage: the first one
# starts the scheduler, the others add their workers; run stop on each node.
# A scheduler.json whose scheduler no longer answers is replaced only if this script
# wrote it on this host and its scheduler process is gone; otherwise start refuses.
# Exit codes: 0 done, 1 failed (message on stderr), 2 usage error.
set -euo pipefail
# dask workers sample every thread's stack every 10 ms by default, which costs rifscale's
# kernels 20-30 %; every 100 ms keeps the dashboard's profile at a tenth of that (deploy/README.md)
export DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=${DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL:-100ms}
# the scheduler drops a worker without heartbeats for this long (a frozen one) and reruns its
# tasks; dask's default, 5 minutes, can stall a run for 10 (deploy/README.md)
export DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=${DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL:-60s}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
bad() { echo "cluster.sh: $*" >&2; exit 2; }
say() { echo "cluster.sh: $*"; }

[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2
workers=1 gpu_workers=0 host=127.0.0.1 tls_dir= timeout=60 dashboard_address=
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case $1 in
    --workers) workers=$2 ;;
    --gpu-workers) gpu_workers=$2 ;;
    --host) host=$2 ;;
    --tls-dir) tls_dir=$2 ;;
    --timeout) timeout=$2 ;;
    --dashboard-address) dashboard_address=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[[ $workers =~ ^[0-9]+$ ]] || bad "--workers must be a whole number; got '$workers'"
[[ $gpu_workers =~ ^[0-9]+$ ]] || bad "--gpu-workers must be a whole number; got '$gpu_workers'"
[[ $timeout =~ ^[0-9]+([.][0-9]+)?$ ]] || bad "--timeout must be a number of seconds; got '$timeout'"
[ -n "$host" ] || bad "--host must not be empty"
dashboard_address=${dashboard_address:-127.0.0.1:0}

HOST=$(hostname 2>/dev/null || uname -n)
HOSTKEY=$(printf %s "$HOST" | tr -c 'A-Za-z0-9._-' '_')
BOOT=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || sysctl -n kern.boottime 2>/dev/null || echo unknown)
STOP_GRACE=${STOP_GRACE:-30}  # seconds a process gets to shut down after SIGTERM
SCHEDULER_START=120           # seconds the scheduler gets to write its file

# --- processes: start time and command line, read afresh each time -------------------

proc_start() {  # start time of PID: clock ticks after boot (Linux /proc), else ps's lstart
  local stat rest
  if [ -d /proc/self ]; then
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }  # fields 3.. (the command name in field 2 may hold spaces and parens)
    local -a f
    read -r -a f <<<"$rest"
    [ -n "${f[19]:-}" ] || return 1
    echo "${f[19]}"  # field 22: starttime
  else
    local s
    s=$(ps -o lstart= -p "$1" 2>/dev/null) || return 1
    [ -n "$s" ] || return 1
    echo "$s" | sed 's/^ *//'
  fi
}

proc_cmd() {  # command line of PID, arguments joined by spaces
  if [ -d /proc/self ]; then
    [ -r "/proc/$1/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | sed 's/ $//'
  else
    ps -ww -o args= -p "$1" 2>/dev/null
  fi
}

field() { sed -n "s/^$2=//p" "$1" | head -n 1; }

is_ours() {  # is the process of record FILE alive and still the one this script started?
  local f=$1 pid
  pid=$(field "$f" pid)
  [[ $pid =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] || return 1
  [ "$(field "$f" host)" = "$HOST" ] && [ "$(field "$f" boot)" = "$BOOT" ] || return 1
  [ "$(proc_start "$pid" 2>/dev/null)" = "$(field "$f" start)" ] || return 1
  # the command line is recorded once the process is up (it changes when the launching
  # shell execs the command); until then the start time alone identifies the process
  [ "$(field "$f" cmd)" = "(starting)" ] || [ "$(proc_cmd "$pid" 2>/dev/null)" = "$(field "$f" cmd)" ] || return 1
}

descendants() {  # pids of the children, grandchildren, ... of PID
  ps -e -o pid= -o ppid= 2>/dev/null | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { todo = root
          while (todo != "") { n = split(todo, a, " "); todo = ""
            for (i = 1; i <= n; i++) { m = split(kids[a[i]], k, " ")
              for (j = 1; j <= m; j++) { print k[j]; todo = todo " " k[j] } } } }'
}

kill_hard() {  # SIGKILL the process of record FILE (verified) and its descendants (seen now)
  local f=$1 pid d s
  is_ours "$f" || return 0
  pid=$(field "$f" pid)
  local -a tree=()
  for d in $(descendants "$pid"); do
    s=$(proc_start "$d" 2>/dev/null) && tree+=("$d:$s")
  done
  is_ours "$f" && kill -KILL "$pid" 2>/dev/null || true
  for d in "${tree[@]}"; do  # only if it is still the process seen under ours a moment ago
    [ "$(proc_start "${d%%:*}" 2>/dev/null)" = "${d#*:}" ] && kill -KILL "${d%%:*}" 2>/dev/null || true
  done
}

stop_records() {  # TERM the processes of the given records, wait, then KILL what is left
  local f pid
  local -a pending=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(field "$f" pid)
    if is_ours "$f"; then
      kill -TERM "$pid" 2>/dev/null || true
      pending+=("$f")
    else
      if [ "$(field "$f" boot)" != "$BOOT" ]; then
        say "$(field "$f" name): pid $pid was recorded before this host restarted: not signalled"
      elif proc_start "$pid" >/dev/null 2>&1 && [ "$(field "$f" host)" = "$HOST" ]; then
        say "$(field "$f" name): pid $pid now belongs to another process (start time or command line differ from the record): not signalled"
      else
        say "$(field "$f" name): pid $pid has exited"
      fi
      rm -f "$f"
    fi
  done
  [ ${#pending[@]} -gt 0 ] || return 0
  local deadline=$((SECONDS + STOP_GRACE)) left
  while :; do
    left=0
    for f in "${pending[@]}"; do is_ours "$f" && left=1; done
    [ $left = 1 ] && [ $SECONDS -lt $deadline ] || break
    sleep 0.2
  done
  for f in "${pending[@]}"; do
    if is_ours "$f"; then
      say "$(field "$f" name) (pid $(field "$f" pid)) did not stop within ${STOP_GRACE} s of SIGTERM: SIGKILL"
      kill_hard "$f"
    fi
    rm -f "$f"
  done
}

# --- the Python of dask's environment, for the probes ----------------------------------

DASK=$(command -v dask 2>/dev/null) || DASK=
python_of_dask() {
  [ -n "$DASK" ] || die "no 'dask' command on PATH; activate the environment where rifscale is installed"
  local py
  py=$(dirname "$DASK")/python
  [ -x "$py" ] || py=$(command -v python3)
  echo "$py"
}
PROBE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/probe.py

probe() {  # probe.py SUBCOMMAND ...: ask the scheduler of DIR/scheduler.json
  local -a tls=()
  [ -z "$tls_dir" ] || tls=(--tls-dir "$tls_dir")
  "$(python_of_dask)" "$PROBE" "$@" "$sched" ${tls[@]+"${tls[@]}"}
}

# --- start ----------------------------------------------------------------------------

launch() {  # launch NAME LOG [VAR=VALUE] -- CMD...: start CMD detached (SIGHUP ignored, stdin
  # /dev/null) and record its pid, start time and boot id in $hostdir/NAME.pid
  local name=$1 log=$2 envset=; shift 2
  [ "$1" = -- ] || envset=$1
  [ "$1" = -- ] || shift
  shift
  # (fd 9, the lock of DIR, is not passed on: a process holding it would keep the lock)
  ( trap '' HUP; [ -z "$envset" ] || export "${envset?}"; exec 9>&- "$@" ) </dev/null >"$log" 2>&1 &
  local pid=$! start
  start=$(proc_start "$pid") || die "$name exited at once; see $log"
  disown "$pid" 2>/dev/null || true  # no "Killed" notice from this shell if stop has to SIGKILL it
  local rec=$hostdir/$name.pid
  printf 'pid=%s\nstart=%s\nboot=%s\nhost=%s\nname=%s\ncmd=(starting)\n' \
    "$pid" "$start" "$BOOT" "$HOST" "$name" >"$rec.tmp"
  mv "$rec.tmp" "$rec"
  started+=("$rec")
}

finish_record() {  # record the command line of a started process, now that it is up
  local f=$1 cmd
  is_ours "$f" || return 1
  cmd=$(proc_cmd "$(field "$f" pid)") && [ -n "$cmd" ] || return 1
  printf 'pid=%s\nstart=%s\nboot=%s\nhost=%s\nname=%s\ncmd=%s\n' "$(field "$f" pid)" "$(field "$f" start)" \
    "$(field "$f" boot)" "$(field "$f" host)" "$(field "$f" name)" "$cmd" >"$f.tmp"
  mv "$f.tmp" "$f"
}

fail_start() {  # stop what this invocation started, then fail
  say "$1; stopping the processes this start launched" >&2
  stop_records ${started[@]+"${started[@]}"} >&2
  if [ "$own_scheduler" = 1 ]; then rm -f "$sched" "$owner"; fi
  exit 1
}

lock() {  # one start/stop at a time per DIR (where flock exists)
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$dir/.cluster.lock"
    flock -w 300 9 || die "another cluster.sh holds $dir/.cluster.lock"
  fi
}

case $cmd in
  start)
    [ -n "$DASK" ] || die "no 'dask' command on PATH; activate the environment where rifscale is installed"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    hostdir=$dir/hosts/$HOSTKEY
    sched=$dir/scheduler.json
    owner=$dir/scheduler.owner
    mkdir -p "$hostdir"
    lock
    protocol=tcp
    tls_args=()
    if [ -n "$tls_dir" ]; then
      tls_dir=$(cd "$tls_dir" 2>/dev/null && pwd) || bad "--tls-dir $tls_dir is not a directory"
      for f in ca.pem cert.pem key.pem; do
        [ -f "$tls_dir/$f" ] || bad "--tls-dir: $tls_dir/$f does not exist (needs ca.pem, cert.pem, key.pem)"
        [ -r "$tls_dir/$f" ] || bad "--tls-dir: $tls_dir/$f cannot be read"
      done
      protocol=tls
      tls_args=(--tls-ca-file "$tls_dir/ca.pem" --tls-cert "$tls_dir/cert.pem" --tls-key "$tls_dir/key.pem")
    fi
    case $host in
      127.*|::1|localhost) ;;
      *) [ -n "$tls_dir" ] || echo "cluster.sh: warning: listening on $host without TLS: anyone who can reach these ports can run code as $(id -un) (see deploy/README.md)" >&2 ;;
    esac
    started=() own_scheduler=0

    if [ -e "$sched" ]; then
      case $(sed -n 's/.*"address": *"\([a-z]*\):.*/\1/p' "$sched" | head -n 1):$protocol in
        tls:tcp) bad "the scheduler of $sched uses TLS: pass --tls-dir with this cluster's certificates" ;;
        tcp:tls) bad "the scheduler of $sched does not use TLS: drop --tls-dir, or use another DIR" ;;
      esac
      if probe alive --timeout 5 >/dev/null 2>"$hostdir/probe.log"; then
        say "the scheduler of $sched answers: adding this host's workers to it"
      else
        why=$(tail -n 1 "$hostdir/probe.log" 2>/dev/null || true)
        sched_id=$(sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' "$sched" | head -n 1)
        if [ -f "$owner" ] && [ -n "$sched_id" ] && [ "$(field "$owner" id)" = "$sched_id" ]; then
          if [ "$(field "$owner" host)" != "$HOST" ]; then
            die "$sched names a scheduler that does not answer ($why); this script started it on host $(field "$owner" host): run 'cluster.sh stop $dir' there (or remove $sched if that host is gone)"
          fi
          if [ -f "$hostdir/scheduler.pid" ] && is_ours "$hostdir/scheduler.pid"; then
            die "the scheduler process (pid $(field "$hostdir/scheduler.pid" pid)) is running but does not answer ($why); see $hostdir/scheduler.log, or run 'cluster.sh stop $dir'"
          fi
          say "removing the stale $sched: its scheduler (started here by this script) is gone"
          rm -f "$sched" "$owner" "$hostdir/scheduler.pid"
        else
          die "$sched exists but no scheduler answers there ($why), and this script did not write it: remove it yourself if it is stale, or use another DIR"
        fi
      fi
    fi

    if [ ! -e "$sched" ]; then
      launch scheduler "$hostdir/scheduler.log" -- \
        dask scheduler --host "$host" --port 0 --protocol "$protocol" ${tls_args[@]+"${tls_args[@]}"} \
        --dashboard-address "$dashboard_address" --scheduler-file "$sched"
      own_scheduler=1
      deadline=$((SECONDS + SCHEDULER_START))
      until [ -s "$sched" ] && grep -q '"address"' "$sched" 2>/dev/null; do
        is_ours "$hostdir/scheduler.pid" || fail_start "the scheduler exited; see $hostdir/scheduler.log"
        [ $SECONDS -lt $deadline ] || fail_start "the scheduler did not write $sched within $SCHEDULER_START s; see $hostdir/scheduler.log"
        sleep 0.2
      done
      sleep 0.2  # dask writes the file in one go; let the write finish
      info=$(probe alive --timeout 30 2>&1) || fail_start "the scheduler started but does not answer: $info"
      printf 'id=%s\nhost=%s\nboot=%s\n' "$(echo "$info" | sed -n 's/^id=//p')" "$HOST" "$BOOT" >"$owner"
    fi

    # worker names: the first free numbers on this host
    names=()
    next_free() { local kind=$1 i=${2:-1}; while [ -e "$hostdir/worker-$kind-$i.pid" ]; do i=$((i + 1)); done; echo "$i"; }
    i=0
    for _ in $(seq 1 "$workers"); do
      i=$(next_free cpu $((i + 1)))
      name=cpu-$HOSTKEY-$i
      launch "worker-cpu-$i" "$hostdir/worker-cpu-$i.log" -- \
        dask worker --scheduler-file "$sched" --protocol "$protocol" ${tls_args[@]+"${tls_args[@]}"} \
        --host "$host" --nthreads 1 --no-dashboard --dashboard-address "127.0.0.1:0" --name "$name"
      names+=("$name")
    done
    devices=()
    [ -z "${CUDA_VISIBLE_DEVICES:-}" ] || IFS=, read -r -a devices <<<"$CUDA_VISIBLE_DEVICES"
    i=0
    for g in $(seq 0 $((gpu_workers - 1))); do
      i=$(next_free gpu $((i + 1)))
      device=${devices[$g]:-$g}
      name=gpu-$HOSTKEY-$i
      launch "worker-gpu-$i" "$hostdir/worker-gpu-$i.log" "CUDA_VISIBLE_DEVICES=$device" -- \
        dask worker --scheduler-file "$sched" --protocol "$protocol" ${tls_args[@]+"${tls_args[@]}"} \
        --host "$host" --nthreads 1 --no-dashboard --dashboard-address "127.0.0.1:0" --name "$name" \
        --resources "GPU=1"
      names+=("$name")
    done

    if [ ${#names[@]} -gt 0 ]; then
      pids=()
      for f in "${started[@]}"; do pids+=("$(field "$f" pid)"); done
      out=$(probe wait --names "$(IFS=,; echo "${names[*]}")" --pids "$(IFS=,; echo "${pids[*]}")" \
        --timeout "$timeout" 2>&1) || fail_start "$out (logs in $hostdir)"
    fi
    info=$(probe alive --timeout 10 2>&1) || fail_start "$info"
    for f in ${started[@]+"${started[@]}"}; do
      finish_record "$f" || fail_start "$(field "$f" name) exited; see its log in $hostdir"
    done
    address=$(echo "$info" | sed -n 's/^address=//p')
    dash=$(echo "$info" | sed -n 's/^dashboard=//p')
    say "scheduler $address (file $sched); this host added $workers CPU and $gpu_workers GPU worker(s), all joined"
    if [ -n "$dash" ] && [ $own_scheduler = 1 ]; then
      dash_host=${dashboard_address%:*}
      case $dash_host in ""|0.0.0.0|"[::]") dash_host=127.0.0.1 ;; esac
      say "dashboard: http://$dash_host:$dash/status"
    fi
    ;;

  status)
    [ -d "$dir" ] || die "$dir does not exist"
    dir=$(cd "$dir" && pwd)
    hostdir=$dir/hosts/$HOSTKEY sched=$dir/scheduler.json
    if [ -n "$tls_dir" ]; then tls_dir=$(cd "$tls_dir" && pwd); fi
    if [ -e "$sched" ]; then
      if info=$(probe alive --timeout 5 2>&1); then say "scheduler $(echo "$info" | sed -n 's/^address=//p') answers"
      else say "$sched: no answer ($(echo "$info" | tail -n 1))"; fi
    else
      say "no $sched"
    fi
    for f in "$hostdir"/*.pid; do
      [ -f "$f" ] || continue
      if is_ours "$f"; then state=running; else state="gone (or pid reused)"; fi
      say "$(field "$f" name): pid $(field "$f" pid), $state"
    done
    ;;

  stop)
    [ -d "$dir" ] || { say "$dir does not exist: nothing to stop"; exit 0; }
    dir=$(cd "$dir" && pwd)
    hostdir=$dir/hosts/$HOSTKEY sched=$dir/scheduler.json owner=$dir/scheduler.owner
    lock
    shopt -s nullglob
    worker_recs=("$hostdir"/worker-*.pid)
    had_scheduler=0
    [ ! -f "$hostdir/scheduler.pid" ] || had_scheduler=1
    [ ${#worker_recs[@]} -gt 0 ] || [ $had_scheduler = 1 ] || say "no processes of this host ($HOST) recorded in $dir"
    stop_records ${worker_recs[@]+"${worker_recs[@]}"}
    if [ $had_scheduler = 1 ]; then
      stop_records "$hostdir/scheduler.pid"
      # dask removes its scheduler file on a clean exit; after SIGKILL it stays: remove it
      # only if it is the one this script wrote for the scheduler of this host
      sched_id=$([ -f "$sched" ] && sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' "$sched" | head -n 1 || true)
      if [ -f "$owner" ] && [ "$(field "$owner" host)" = "$HOST" ]; then
        [ -z "$sched_id" ] || [ "$(field "$owner" id)" != "$sched_id" ] || rm -f "$sched"
        rm -f "$owner"
      fi
    fi
    others=()
    for d in "$dir"/hosts/*/; do
      d=${d%/}
      [ "$d" = "$hostdir" ] && continue
      recs=("$d"/*.pid)
      [ ${#recs[@]} -eq 0 ] || others+=("${d##*/}")
    done
    [ ${#others[@]} -eq 0 ] || say "processes recorded by other hosts (not touched): ${others[*]}; run stop there"
    say "stopped this host's processes of the cluster in $dir"
    ;;
  *) usage ;;
esac
