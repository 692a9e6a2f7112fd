#!/usr/bin/env bash
# Run every performance bench once, in sequence, with moderate defaults (about 21 minutes
# on 2 cores). Plain-text reports go to stdout and to $OUT/<bench>.txt, JSON documents to
# $OUT/<bench>.json. Everything targets 127.0.0.1 and stops by itself.
#
#   bench/run_all.sh                 # OUT defaults to /tmp/broker-bench/<timestamp>
#   OUT=/some/dir bench/run_all.sh
#
# Needs: wrk (apt-get install -y wrk), redis-server (apt-get install -y redis-server, for
# replicas), authlib and py-spy in the venv
# (pip install authlib py-spy). The "standard" serving variant (uvloop + httptools, what
# uvicorn[standard] installs) uses a pip --target directory so the venv keeps its default stack.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-${TMPDIR:-/tmp}/broker-bench/$(date +%Y%m%d-%H%M%S)}
UVSTD=${BENCH_UVSTD:-${TMPDIR:-/tmp}/broker-bench-uvstd}
mkdir -p "$OUT"
export BENCH_JSON_DIR="$OUT" BENCH_UVSTD="$UVSTD"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
if [ ! -d "$UVSTD/uvloop" ]; then
    $PY -m pip install --quiet --target "$UVSTD" uvloop httptools \
        || echo "# could not install uvloop/httptools: the standard serving variant is skipped"
fi

status=0
run() {  # run <name> <args...>: one bench, report to stdout and $OUT/<name>.txt
    local name=$1; shift
    echo "=== $name: $PY -m bench.$* ($(date +%T))"
    $PY -m "bench.$@" 2>"$OUT/$name.stderr" | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "=== $name: exit $rc (a target not met, or see $OUT/$name.stderr)"; status=1; }
    echo
}

{
    echo "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-);"\
        "python: $($PY -V 2>&1); loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
} | tee "$OUT/machine.txt"

run serving serving --seconds 5 --conns 1,16,256 --variants default,standard --ladder \
    --profile-seconds 10 --out-dir "$OUT"
run single_flight single_flight --callers 1000
run refresh_noise refresh_noise --providers 1000 --ttl 20 --rounds 2 --ready-timeout 45 --profile
run refresh_noise_100 refresh_noise --providers 100 --ttl 10 --rounds 6
run scale scale --providers 10,100,1000,10000 --ready-timeout 45
run scale_staged scale --providers 1000 --stage 100
run startup startup --providers 1,1000 --repeat 3 --timeout 30
run probe probe --runs 30
run vs_inprocess vs_inprocess --workers 50 --window 60 --short-ttl 20
run replicas replicas --replicas 1,3,10 --ttl 4 --window 45 --propagation 3,10 \
    --propagation-window 60 --conns 1,16,256 --seconds 5
run redact redact --secrets 10000
run name_timing name_timing --rounds 20000 --http-rounds 5000

echo "reports in $OUT"
exit $status
