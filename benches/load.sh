#!/usr/bin/env bash
# benches/load.sh: the end-to-end load benchmark of BENCHMARKS.md, in one command.
#
#   benches/load.sh [http] [replay] [memory] [freshness] [history] [read-fresh]
#                                                (no argument: the first four; the last two on request)
#
# Each section measures the service against a baseline taken in the same run, on this machine:
#   http       wrk drives the stats request (all rows, and the vendor's two-zone filter), the same
#              server's GET /health/live, and nginx answering the same POST with the exact bytes the
#              service just answered (Debian's nginx-light, its own config in target/load/nginx:
#              worker_processes 2, access_log off, `return 200 '<body>'`) and bare hyper answering
#              the same bytes (benches/e2e.rs `hyper`: the floor of any hyper server), alternating,
#              ROUNDS times; the headline is stats/nginx, and each row has the server's CPU time
#              per request (user + system, all its threads, from /proc), the measure that holds
#              when the machine's steal time moves requests/s between rounds. Then again while
#              `produce` streams events into the topic the server consumes (ingest running); then,
#              when `oha` is on the PATH, the stats request and /health/live at fixed rates (half
#              and a third of the measured stats rate) for p99. Without nginx (apt-get install
#              nginx-light) the nginx rows are skipped.
#   replay     EVENTS records (default 10M) in a 4-partition topic; alternately replayed by a bare
#              rdkafka BaseConsumer that only counts them (benches/e2e.rs `bare`) and by
#              `permit-stats serve` (until /health/ready); records/s of both, and the ratio. With
#              Debian's libmimalloc2.0 installed, also the bare consumer with it preloaded.
#   memory     resident bytes per live permit, in process, at 1M and 10M permits (e2e `memory`);
#              and the service's whole RSS per live permit after the replay above.
#   freshness  produce->visible latency at a steady FRESH_RATE events/s (e2e `freshness`).
#   history    checkpoints (not in the default run: it produces its own EVENTS-record topic, with
#              HISTORY_PERMITS live permits, once per broker). REPLAY_ROUNDS times, alternating:
#              `serve` without a store, start to /health/ready (a full replay); `permit-stats
#              checkpoint` into an empty directory (its write time and size, bytes per live permit);
#              `serve --checkpoint-store` on it, start to ready (the restore; goal < 1 s), its log
#              checked for the restore and its permit gauges for the full replay's. Then the ingest
#              pause: `serve --checkpoint-interval 1` on a LIVE_EVENTS-record topic with the same
#              live permits while `produce --rate INGEST_RATE` streams into it, the checkpoint
#              gauges scraped PAUSE_SAMPLES times. Start times are polled every 10 ms on one
#              keep-alive connection (python), from just before the process is started.
#   read-fresh the same while wrk -c32 saturates the stats request, beside a bare consumer's
#              produce->receive on the same records (not in the default list; READ_FRESH_NICE,
#              READ_FRESH_WRITES).
#
# A real Apache Kafka broker is started with scripts/kafka.sh unless KAFKA_BOOTSTRAP is set.
# Knobs (environment): EVENTS=10000000 ROUNDS=3 REPLAY_ROUNDS=3 DURATION=10 CONNECTIONS=64 THREADS=1
# INGEST_RATE=20000 FRESH_RATE=1000 FRESH_SECONDS=10 HISTORY_PERMITS=1000000 LIVE_EVENTS=3000000
# PAUSE_SAMPLES=10 MIMALLOC_SO NGINX (the nginx binary; default
# nginx on the PATH, else /usr/sbin/nginx). Results: a table on stdout and in target/load/results.md;
# raw tool output in target/load/.
#
# Regression gate: MIN_NGINX_RATIO=0.6 benches/load.sh http exits 1 (after printing its tables) when
# the median over the http rounds of (stats requests/s / nginx requests/s) is below 0.6; with
# MIN_NGINX_RATIO set, a missing nginx is an error instead of a skip. Unset: no gate.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
EVENTS=${EVENTS:-10000000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
INGEST_RATE=${INGEST_RATE:-20000}
FRESH_RATE=${FRESH_RATE:-1000}
FRESH_SECONDS=${FRESH_SECONDS:-10}
REPLAY_ROUNDS=${REPLAY_ROUNDS:-3}
HISTORY_PERMITS=${HISTORY_PERMITS:-1000000}
LIVE_EVENTS=${LIVE_EVENTS:-3000000}
PAUSE_SAMPLES=${PAUSE_SAMPLES:-10}
MIN_NGINX_RATIO=${MIN_NGINX_RATIO:-}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
# The service links mimalloc, which also takes librdkafka's malloc. When Debian's libmimalloc2.0 is
# installed, the replay section also runs the bare consumer with it preloaded, as a second baseline.
MIMALLOC_SO=${MIMALLOC_SO:-/usr/lib/x86_64-linux-gnu/libmimalloc.so.2}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/load
BIN=${PERMIT_STATS_BIN:-$TARGET/release/permit-stats}
sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(http replay memory freshness)

mkdir -p "$OUT"
RESULTS=$OUT/results.md
: >"$RESULTS"
log() { printf 'load.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
result() { printf '%s\n' "$*" | tee -a "$RESULTS"; }

command -v wrk >/dev/null || [[ ! " ${sections[*]} " =~ " http " ]] \
  || die "wrk not found (apt-get install wrk)"
if [[ -n $MIN_NGINX_RATIO ]]; then
  python3 -c 'import sys; float(sys.argv[1])' "$MIN_NGINX_RATIO" 2>/dev/null \
    || die "MIN_NGINX_RATIO=$MIN_NGINX_RATIO is not a number"
  [[ " ${sections[*]} " =~ " http " ]] || die "MIN_NGINX_RATIO needs the http section"
fi
HAVE_NGINX=0
if [[ " ${sections[*]} " =~ " http " ]]; then
  if [[ -x $NGINX ]]; then
    HAVE_NGINX=1
  elif [[ -n $MIN_NGINX_RATIO ]]; then
    die "nginx not found at $NGINX (apt-get install nginx-light), needed by MIN_NGINX_RATIO"
  else
    log "nginx not found at $NGINX (apt-get install nginx-light): the nginx baseline rows are skipped"
  fi
fi
GATE_FAILED=0

log "building (release)"
cargo build --release --bin permit-stats >&2
E2E_BIN=$(cargo bench --bench e2e --no-run --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("target", {}).get("name") == "e2e" and m.get("executable"):
        print(m["executable"])')
[[ -x $E2E_BIN ]] || die "cannot find the e2e bench binary"
e2e() { cargo bench -q --bench e2e -- "$@" 2>/dev/null | grep '^{'; }

SERVER_PID=""
NGINX_PID=""
HYPER_PID=""
OWN_KAFKA=0
cleanup() {
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  [[ -n $HYPER_PID ]] && kill "$HYPER_PID" 2>/dev/null && wait "$HYPER_PID" 2>/dev/null
  [[ -n ${PRODUCER_PID:-} ]] && kill "$PRODUCER_PID" 2>/dev/null
  if [[ $OWN_KAFKA == 1 ]]; then scripts/kafka.sh stop "$KAFKA_RUN_DIR" >&2 || true; fi
}
trap cleanup EXIT
if [[ -z ${KAFKA_BOOTSTRAP:-} ]]; then
  eval "$(scripts/kafka.sh start)"
  OWN_KAFKA=1
fi
log "broker: $KAFKA_BOOTSTRAP"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$2)" "$1"; }

# A token for each client code given, into $OUT/tokens.toml; prints the tokens, one a line.
tokens() {
  : >"$OUT/tokens.toml"
  for client in "$@"; do
    "$BIN" token --client "$client" --name load >"$OUT/token.out"
    head -n 1 "$OUT/token.out"
    tail -n +3 "$OUT/token.out" >>"$OUT/tokens.toml"
  done
}

# serve TOPIC: starts the service on a free port; sets SERVER_PID and ADDR; waits until ready.
serve() {
  local port
  port=$(free_port)
  ADDR=127.0.0.1:$port
  "$BIN" serve --brokers "$KAFKA_BOOTSTRAP" --topic "$1" --tokens "$OUT/tokens.toml" \
    --listen "$ADDR" >"$OUT/serve.log" 2>&1 &
  SERVER_PID=$!
  local deadline=$((SECONDS + 600))
  until curl -sf "http://$ADDR/health/ready" >"$OUT/ready.json" 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$OUT/serve.log" >&2; die "serve exited"; }
    ((SECONDS < deadline)) || die "serve not ready after 600 s"
    # Coarse on purpose: a curl started ten times a second took about 7% of a core from the
    # replay being timed, and the replay's time comes from the service itself (replay_seconds).
    sleep 1
  done
}

stop_server() {
  kill "$SERVER_PID" && wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

produce() { # TOPIC EVENTS [extra produce flags...]
  local topic=$1 events=$2
  shift 2
  "$BIN" produce --brokers "$KAFKA_BOOTSTRAP" --topic "$topic" --create-partitions 4 \
    --events "$events" "$@" 2>>"$OUT/produce.log" >&2
}

# cpu_ticks PID...: the CPU time (user + system, clock ticks) of every thread of the processes.
cpu_ticks() {
  local pid
  for pid in "$@"; do cat "/proc/$pid/task/"*/stat 2>/dev/null || true; done \
    | awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}
CLK_TCK=$(getconf CLK_TCK)

# wrk_run NAME URL LUA PIDS: one wrk run against the server made of the processes PIDS (a
# space-separated list); prints "rps p50_ms p99_ms cpu_us_per_request".
wrk_run() {
  local name=$1 url=$2 script=$3 pids=$4 before after
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [[ -n $script ]] && args+=(-s "$script")
  # shellcheck disable=SC2086 # a list of PIDs
  before=$(cpu_ticks $pids)
  wrk "${args[@]}" "$url" >"$OUT/wrk-$name.txt" 2>&1
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  python3 - "$OUT/wrk-$name.txt" "$((after - before))" "$CLK_TCK" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
cpu_us = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / max(requests, 1)
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if non2xx:
    sys.exit(f"{sys.argv[1]}: {non2xx.group(1)} non-2xx answers")
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {cpu_us:.1f}")
EOF
}

lua_post() { # FILE TOKEN ZONES_JSON_FRAGMENT
  cat >"$1" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.body = '{"apiToken":"$2"$3}'
EOF
}

# start_nginx BODY_FILE URL_PATH: nginx (own config, pid file, temp paths and error log in
# $OUT/nginx) on a free port, answering every request with the bytes of BODY_FILE as
# application/json via `return 200 '...'` (a POST to a static file gets 405); sets NGINX_PID and
# NGINX_URL (URL_PATH on it); checks that a POST answers exactly those bytes.
start_nginx() {
  local body=$1 path=$2 dir=$OUT/nginx port
  rm -rf "$dir" && mkdir -p "$dir"
  port=$(free_port)
  local temps="" m version
  version=$("$NGINX" -V 2>&1)
  for m in client_body proxy fastcgi uwsgi scgi; do
    [[ $m == client_body || $version != *"--without-http_${m}_module"* ]] || continue
    temps+="  ${m}_temp_path $dir/tmp-$m;"$'\n'
  done
  # nginx's quoted strings: \\ and \' are escapes; '$name' would be a variable, so a literal $
  # goes through ${dollar}, a geo variable that is always "$".
  python3 - "$body" "$dir/return.conf" <<'EOF'
import sys
b = open(sys.argv[1], "rb").read()
b = b.replace(b"\\", b"\\\\").replace(b"'", b"\\'").replace(b"$", b"${dollar}")
open(sys.argv[2], "wb").write(b"return 200 '" + b + b"';\n")
EOF
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
$temps  geo \$dollar { default "\$"; }
  server {
    listen 127.0.0.1:$port;
    location / {
      default_type application/json;
      include $dir/return.conf;
    }
  }
}
EOF
  "$NGINX" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >&2 2>&1 \
    || die "nginx rejected $dir/nginx.conf (see $dir/error.log)"
  "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/nginx.out" 2>&1 &
  NGINX_PID=$!
  NGINX_URL="http://127.0.0.1:$port$path"
  local tries=0
  until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$dir/error.log" >&2; die "nginx exited"; }
    ((++tries < 100)) || die "nginx not answering on port $port"
    sleep 0.1
  done
}

stop_nginx() {
  [[ -n $NGINX_PID ]] || return 0
  kill "$NGINX_PID" 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
  NGINX_PID=""
}

# start_hyper BODY_FILE URL_PATH: bare hyper (e2e `hyper`) on a free port, answering every
# request with the bytes of BODY_FILE; sets HYPER_PID and HYPER_URL; checks those bytes.
start_hyper() {
  local body=$1 path=$2 port tries=0
  port=$(free_port)
  "$E2E_BIN" --bench hyper "127.0.0.1:$port" "$body" >"$OUT/hyper.out" 2>&1 &
  HYPER_PID=$!
  HYPER_URL="http://127.0.0.1:$port$path"
  until curl -sf -X POST -d '{}' "$HYPER_URL" >"$OUT/hyper-body.json" 2>/dev/null; do
    kill -0 "$HYPER_PID" 2>/dev/null || { cat "$OUT/hyper.out" >&2; die "bare hyper exited"; }
    ((++tries < 100)) || die "bare hyper not answering on port $port"
    sleep 0.1
  done
  cmp -s "$body" "$OUT/hyper-body.json" || die "bare hyper does not answer $body's bytes"
}

stop_hyper() {
  [[ -n $HYPER_PID ]] || return 0
  kill "$HYPER_PID" 2>/dev/null || true
  wait "$HYPER_PID" 2>/dev/null || true
  HYPER_PID=""
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# round_ratio COLUMN A B: the median over the rounds of $OUT/http.txt of A's COLUMN / B's (the
# two ran back to back in each round).
round_ratio() {
  paste <(awk -v t="$2" -v c="$1" '$1==t {print $c}' "$OUT/http.txt") \
    <(awk -v t="$3" -v c="$1" '$1==t {print $c}' "$OUT/http.txt") \
    | awk '$2 > 0 {printf "%.3f\n", $1 / $2}' | median
}

section_http() {
  local topic=load-http-$$ token
  log "http: 200k events over 20 zones into $topic"
  produce "$topic" 200000 --permits 50000 --zones 20
  token=$(tokens OC-TOMA)
  serve "$topic"
  lua_post "$OUT/stats.lua" "$token" ''
  lua_post "$OUT/stats2.lua" "$token" ',"zones":"Lot 01,Lot 02"'
  local stats_url="http://$ADDR/api/OC-TOMA/v1/permits/stats" live_url="http://$ADDR/health/live"
  # The POST wrk sends (stats.lua), so that nginx serves the very bytes of this answer.
  curl -sf -X POST -H 'Content-Type: application/json' -H 'Accept: application/json' \
    -d "{\"apiToken\":\"$token\"}" "$stats_url" >"$OUT/stats-body.json"
  log "http: stats body $(wc -c <"$OUT/stats-body.json") bytes; ${ROUNDS} rounds of ${DURATION}s"
  local targets=(live stats stats2 hyper) nginx_url="" nginx_pids=""
  start_hyper "$OUT/stats-body.json" /api/OC-TOMA/v1/permits/stats
  if [[ $HAVE_NGINX == 1 ]]; then
    start_nginx "$OUT/stats-body.json" /api/OC-TOMA/v1/permits/stats
    nginx_url=$NGINX_URL
    curl -sf -X POST -H 'Content-Type: application/json' -H 'Accept: application/json' \
      -d "{\"apiToken\":\"$token\"}" "$nginx_url" >"$OUT/nginx-body.json"
    cmp -s "$OUT/stats-body.json" "$OUT/nginx-body.json" \
      || die "nginx does not answer the service's bytes (see $OUT/nginx-body.json)"
    log "http: $("$NGINX" -v 2>&1) on $nginx_url answers the same $(wc -c <"$OUT/nginx-body.json") bytes"
    targets+=(nginx)
    # The master and its workers (these answer).
    nginx_pids="$NGINX_PID $(pgrep -P "$NGINX_PID" | paste -sd ' ')"
  fi
  : >"$OUT/http.txt"
  for round in $(seq "$ROUNDS"); do
    for target in "${targets[@]}"; do
      case $target in
        live) line=$(wrk_run "live-$round" "$live_url" "" "$SERVER_PID") ;;
        stats) line=$(wrk_run "stats-$round" "$stats_url" "$OUT/stats.lua" "$SERVER_PID") ;;
        stats2) line=$(wrk_run "stats2-$round" "$stats_url" "$OUT/stats2.lua" "$SERVER_PID") ;;
        hyper) line=$(wrk_run "hyper-$round" "$HYPER_URL" "$OUT/stats.lua" "$HYPER_PID") ;;
        nginx) line=$(wrk_run "nginx-$round" "$nginx_url" "$OUT/stats.lua" "$nginx_pids") ;;
      esac
      echo "$target $line" | tee -a "$OUT/http.txt" >&2
    done
  done
  log "http: again while produce streams $INGEST_RATE events/s into the topic"
  local ingest_events=$((INGEST_RATE * (DURATION * ${#targets[@]} + 10)))
  "$BIN" produce --brokers "$KAFKA_BOOTSTRAP" --topic "$topic" --events "$ingest_events" \
    --rate "$INGEST_RATE" --permits 50000 --zones 20 --seed 7 2>>"$OUT/produce.log" &
  PRODUCER_PID=$!
  sleep 2
  for target in "${targets[@]}"; do
    case $target in
      live) line=$(wrk_run "ingest-live" "$live_url" "" "$SERVER_PID") ;;
      stats) line=$(wrk_run "ingest-stats" "$stats_url" "$OUT/stats.lua" "$SERVER_PID") ;;
      stats2) line=$(wrk_run "ingest-stats2" "$stats_url" "$OUT/stats2.lua" "$SERVER_PID") ;;
      hyper) line=$(wrk_run "ingest-hyper" "$HYPER_URL" "$OUT/stats.lua" "$HYPER_PID") ;;
      nginx) line=$(wrk_run "ingest-nginx" "$nginx_url" "$OUT/stats.lua" "$nginx_pids") ;;
    esac
    echo "ingest-$target $line" | tee -a "$OUT/http.txt" >&2
  done
  kill "$PRODUCER_PID" 2>/dev/null || true
  wait "$PRODUCER_PID" 2>/dev/null || true
  PRODUCER_PID=""
  local lag
  lag=$(curl -s "http://$ADDR/metrics" | awk '/^permit_stats_consumer_lag_records/ {s+=$NF} END {print s+0}')

  result "### HTTP (wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, loopback; median of $ROUNDS rounds; $(uptime | sed 's/.*load average/load average/'))"
  result ""
  local nginx_col="" nginx_sep=""
  if [[ $HAVE_NGINX == 1 ]]; then nginx_col=" vs nginx |" nginx_sep="---|"; fi
  result "| request | requests/s |$nginx_col vs /health/live | p50 ms | p99 ms | server CPU µs/request |"
  result "|---|---|$nginx_sep---|---|---|---|"
  for prefix in "" "ingest-"; do
    local live_rps nginx_rps=""
    live_rps=$(awk -v t="${prefix}live" '$1==t {print $2}' "$OUT/http.txt" | median)
    [[ $HAVE_NGINX == 1 ]] && nginx_rps=$(awk -v t="${prefix}nginx" '$1==t {print $2}' "$OUT/http.txt" | median)
    for target in "${targets[@]}"; do
      local rps p50 p99 cpu label
      rps=$(awk -v t="$prefix$target" '$1==t {print $2}' "$OUT/http.txt" | median)
      p50=$(awk -v t="$prefix$target" '$1==t {print $3}' "$OUT/http.txt" | median)
      p99=$(awk -v t="$prefix$target" '$1==t {print $4}' "$OUT/http.txt" | median)
      cpu=$(awk -v t="$prefix$target" '$1==t {print $5}' "$OUT/http.txt" | median)
      case $target in
        live) label="GET /health/live (baseline)" ;;
        stats) label="stats, all $(python3 -c "import json; print(len(json.load(open('$OUT/stats-body.json'))['data']))") rows" ;;
        stats2) label="stats, zones \"Lot 01,Lot 02\"" ;;
        hyper) label="bare hyper, same POST, the all-rows bytes (floor)" ;;
        nginx) label="nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||'), same POST, the all-rows bytes inline (baseline)" ;;
      esac
      [[ -n $prefix ]] && label="$label, ingest at $INGEST_RATE/s"
      local vs_nginx=""
      [[ -n $nginx_rps ]] && vs_nginx=" $(python3 -c "print(f'{$rps/$nginx_rps:.2f}x')") |"
      result "| $label | $rps |$vs_nginx $(python3 -c "print(f'{$rps/$live_rps:.2f}x')") | $p50 | $p99 | $cpu |"
    done
  done
  result ""
  result "Consumer lag after the ingest rounds: $lag records."
  if [[ $HAVE_NGINX == 1 ]]; then
    # The headline and the gate: stats/nginx within each round (the two ran back to back), median.
    local ratios median_ratio
    ratios=$(for round in $(seq "$ROUNDS"); do
      python3 -c 'import sys; print(f"{float(sys.argv[1]) / float(sys.argv[2]):.3f}")' \
        "$(awk '$1=="stats" {print $2}' "$OUT/http.txt" | sed -n "${round}p")" \
        "$(awk '$1=="nginx" {print $2}' "$OUT/http.txt" | sed -n "${round}p")"
    done)
    median_ratio=$(median <<<"$ratios")
    result ""
    result "Stats request / nginx serving its bytes: **$(printf '%.2f' "$median_ratio")x** (median of the" \
      "per-round ratios $(paste -sd ' ' - <<<"$ratios")); bare hyper / nginx:" \
      "$(printf '%.2f' "$(round_ratio 2 hyper nginx)")x. Server CPU per request, same medians:" \
      "stats / nginx $(printf '%.2f' "$(round_ratio 5 stats nginx)")x, stats / bare hyper" \
      "$(printf '%.2f' "$(round_ratio 5 stats hyper)")x, bare hyper / nginx" \
      "$(printf '%.2f' "$(round_ratio 5 hyper nginx)")x."
    if [[ -n $MIN_NGINX_RATIO ]]; then
      if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' \
        "$median_ratio" "$MIN_NGINX_RATIO"; then
        log "gate: stats/nginx $median_ratio is below MIN_NGINX_RATIO=$MIN_NGINX_RATIO"
        GATE_FAILED=1
      else
        log "gate: stats/nginx $median_ratio >= MIN_NGINX_RATIO=$MIN_NGINX_RATIO"
      fi
    fi
  fi

  if command -v oha >/dev/null; then
    local stats_rps half
    stats_rps=$(awk '$1=="stats" {print $2}' "$OUT/http.txt" | median)
    half=$((stats_rps / 2))
    # The same fixed rate for /health/live too: what the machine itself adds to the tail.
    result ""
    result "Fixed rate, half the measured stats rate and a third of it (oha -c $CONNECTIONS, latency-corrected):"
    result ""
    result "| request | requests/s | p50 ms | p99 ms | p99.9 ms | statuses |"
    result "|---|---|---|---|---|---|"
    for rate in "$half" "$((stats_rps / 3))"; do
      log "http: oha at a fixed $rate requests/s"
      oha --no-tui -z "${DURATION}s" -c "$CONNECTIONS" -q "$rate" --latency-correction \
        --output-format json "$live_url" >"$OUT/oha-live-$rate.json" 2>"$OUT/oha.err" || true
      oha --no-tui -z "${DURATION}s" -c "$CONNECTIONS" -q "$rate" --latency-correction \
        -m POST -H 'Content-Type: application/json' -d "{\"apiToken\":\"$token\"}" \
        --output-format json "$stats_url" >"$OUT/oha-stats-$rate.json" 2>>"$OUT/oha.err" || true
      # nginx at the same rate: what the load generator and the machine add to any server's tail.
      echo '{}' >"$OUT/oha-nginx-$rate.json"
      if [[ -n $nginx_url ]]; then
        oha --no-tui -z "${DURATION}s" -c "$CONNECTIONS" -q "$rate" --latency-correction \
          -m POST -H 'Content-Type: application/json' -d "{\"apiToken\":\"$token\"}" \
          --output-format json "$nginx_url" >"$OUT/oha-nginx-$rate.json" 2>>"$OUT/oha.err" || true
      fi
      python3 - "$OUT/oha-live-$rate.json" "$OUT/oha-stats-$rate.json" "$OUT/oha-nginx-$rate.json" "$rate" <<'EOF' | tee -a "$RESULTS"
import json, sys
rate = sys.argv[4]
for path, label in ((sys.argv[1], "GET /health/live"), (sys.argv[2], "stats, all rows"),
                    (sys.argv[3], "nginx, same POST (baseline)")):
    if label.startswith("nginx") and open(path).read().strip() == "{}":
        continue
    try:
        d = json.load(open(path))
    except Exception as e:
        sys.exit(f"oha output unreadable: {e}")
    p = d["latencyPercentiles"]
    s = d["summary"]
    codes = d.get("statusCodeDistribution", {})
    print(f"| {label} at {rate}/s | {s['requestsPerSec']:.0f} | {p['p50']*1e3:.3f} | "
          f"{p['p99']*1e3:.3f} | {p['p99.9']*1e3:.3f} | {codes} |")
EOF
    done
  fi
  result ""
  stop_nginx
  stop_hyper
  stop_server
}

section_replay() {
  local topic=load-replay-$EVENTS token
  if ! "$BIN" produce --help >/dev/null; then die "no produce subcommand"; fi
  if [[ ! -f $OUT/.produced-$topic-${KAFKA_BOOTSTRAP//[:.]/_} ]]; then
    log "replay: producing $EVENTS events into $topic (4 partitions); this takes a while"
    local t0=$SECONDS
    produce "$topic" "$EVENTS" --permits 10000000 --zones 20 --clients OC-TOMA,OC_TOMA,OC-UVIC
    log "replay: produced in $((SECONDS - t0)) s"
    touch "$OUT/.produced-$topic-${KAFKA_BOOTSTRAP//[:.]/_}"
  fi
  token=$(tokens OC-TOMA)
  : >"$OUT/replay.txt"
  for round in $(seq "$REPLAY_ROUNDS"); do
    local bare
    bare=$(e2e bare "$KAFKA_BOOTSTRAP" "$topic")
    echo "bare $(json "$bare" '["rate"]') $(json "$bare" '["bare_records"]')" | tee -a "$OUT/replay.txt" >&2
    if [[ -f $MIMALLOC_SO ]]; then
      bare=$(LD_PRELOAD=$MIMALLOC_SO e2e bare "$KAFKA_BOOTSTRAP" "$topic")
      echo "bare_mimalloc $(json "$bare" '["rate"]') $(json "$bare" '["bare_records"]')" | tee -a "$OUT/replay.txt" >&2
    fi
    serve "$topic"
    local ready rss live
    ready=$(cat "$OUT/ready.json")
    rss=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/$SERVER_PID/status")
    live=$(curl -s "http://$ADDR/metrics" | awk '/^permit_stats_permits\{/ {s+=$NF} END {print s+0}')
    local target seconds
    target=$(json "$ready" '["target"]')
    seconds=$(json "$ready" '["replay_seconds"]')
    echo "service $(python3 -c "print(round($target/$seconds))") $target $seconds $rss $live" | tee -a "$OUT/replay.txt" >&2
    stop_server
  done
  local bare_rate service_rate
  bare_rate=$(awk '$1=="bare" {print $2}' "$OUT/replay.txt" | median)
  service_rate=$(awk '$1=="service" {print $2}' "$OUT/replay.txt" | median)
  read -r _ _ target seconds rss live < <(awk '$1=="service"' "$OUT/replay.txt" | tail -n 1)
  result "### Replay of $EVENTS records, 4 partitions, real Kafka ($(uptime | sed 's/.*load average/load average/'))"
  result ""
  result "| consumer | records/s (median of $REPLAY_ROUNDS) | vs bare |"
  result "|---|---|---|"
  result "| bare rdkafka BaseConsumer, counting only (baseline) | $bare_rate | 1.00x |"
  result "| permit-stats serve: decode + apply + publish, until ready | $service_rate | $(python3 -c "print(f'{$service_rate/$bare_rate:.2f}x')") |"
  if [[ -f $MIMALLOC_SO ]]; then
    local mi_rate
    mi_rate=$(awk '$1=="bare_mimalloc" {print $2}' "$OUT/replay.txt" | median)
    result "| bare BaseConsumer with Debian's mimalloc preloaded (librdkafka on the service's allocator) | $mi_rate | $(python3 -c "print(f'{$mi_rate/$bare_rate:.2f}x')"); service vs it: $(python3 -c "print(f'{$service_rate/$mi_rate:.2f}x')") |"
  fi
  result ""
  result "Service after replay: $live live permits, RSS $((rss / 1048576)) MiB =" \
    "$(python3 -c "print(f'{$rss/max($live,1):.0f}')") bytes per live permit (whole process)."
  result ""
}

section_memory() {
  result "### Memory per live permit (in process, projection only)"
  result ""
  result "| live permits | resident bytes per permit |"
  result "|---|---|"
  for n in 1000000 10000000; do
    local line
    line=$(e2e memory "$n")
    log "memory: $line"
    result "| $n | $(json "$line" '["bytes_per_permit"]') |"
  done
  result ""
}

section_freshness() {
  local topic=load-fresh-$$ token
  produce "$topic" 1000 --clients OC-TOMA
  token=$(tokens FRESH)
  serve "$topic"
  local line
  line=$(e2e freshness "$KAFKA_BOOTSTRAP" "$topic" "$ADDR" "$token" "$FRESH_RATE" "$FRESH_SECONDS")
  log "freshness: $line"
  result "### Freshness: produce -> visible in the stats answer, $FRESH_RATE events/s for ${FRESH_SECONDS}s"
  result ""
  result "p50 $(json "$line" '["p50_ms"]') ms, p90 $(json "$line" '["p90_ms"]') ms," \
    "p99 $(json "$line" '["p99_ms"]') ms, max $(json "$line" '["max_ms"]') ms;" \
    "not seen: $(json "$line" '["not_seen"]')"
  result ""
  stop_server
}

# serve_timed TOPIC [serve flags...]: starts the service on a free port (log in $OUT/serve.log);
# sets SERVER_PID and ADDR, and READY_S: the seconds from just before the start to the first 200 of
# /health/ready, polled every 10 ms on one keep-alive connection (a curl per poll would take CPU
# from the start being timed).
serve_timed() {
  local topic=$1 port t0
  shift
  port=$(free_port)
  ADDR=127.0.0.1:$port
  t0=$(python3 -c 'import time; print(time.time())')
  "$BIN" serve --brokers "$KAFKA_BOOTSTRAP" --topic "$topic" --tokens "$OUT/tokens.toml" \
    --listen "$ADDR" "$@" >"$OUT/serve.log" 2>&1 &
  SERVER_PID=$!
  READY_S=$(python3 - "$ADDR" "$t0" "$SERVER_PID" "$OUT/ready.json" <<'EOF'

import http.client, os, sys, time
addr, t0, pid, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
host, port = addr.split(":")
conn = None
while time.time() - t0 < 600:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("serve exited")
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/health/ready")
        r = conn.getresponse()
        body = r.read()
        if r.status == 200:
            took = time.time() - t0
            open(out, "wb").write(body)
            print(f"{took:.3f}")
            sys.exit(0)
    except (OSError, http.client.HTTPException):
        if conn is not None:
            conn.close()
        conn = None
    time.sleep(0.01)
sys.exit("serve not ready after 600 s")
EOF
) || { tail -n 20 "$OUT/serve.log" >&2; die "serve not ready"; }
}

# Sum of the permit_stats_permits gauges of the running service.
live_permits() {
  curl -s "http://$ADDR/metrics" | awk '/^permit_stats_permits\{/ {s+=$NF} END {print s+0}'
}

section_history() {
  local topic=load-history-$EVENTS-$HISTORY_PERMITS store=$OUT/checkpoints
  local marker=$OUT/.produced-$topic-${KAFKA_BOOTSTRAP//[:.]/_}
  if [[ ! -f $marker ]]; then
    log "history: producing $EVENTS events, $HISTORY_PERMITS live permits at most, into $topic; this takes a while"
    local t0=$SECONDS
    produce "$topic" "$EVENTS" --permits "$HISTORY_PERMITS" --zones 20 --clients OC-TOMA,OC_TOMA,OC-UVIC
    log "history: produced in $((SECONDS - t0)) s"
    touch "$marker"
  fi
  tokens OC-TOMA >/dev/null
  : >"$OUT/history.txt"
  for round in $(seq "$REPLAY_ROUNDS"); do
    # (a) no store: the whole topic is replayed.
    local full full_live full_replay
    serve_timed "$topic"
    full=$READY_S
    full_live=$(live_permits)
    full_replay=$(json "$(cat "$OUT/ready.json")" '["replay_seconds"]')
    stop_server
    # (b) one checkpoint, into an empty store (its own full replay first, then the write).
    rm -rf "$store" && mkdir -p "$store"
    local wrote bytes permits write_ms
    wrote=$("$BIN" checkpoint --brokers "$KAFKA_BOOTSTRAP" --topic "$topic" \
      --checkpoint-store "$store" 2>"$OUT/checkpoint.log" | grep '^wrote ') \
      || { tail -n 20 "$OUT/checkpoint.log" >&2; die "checkpoint wrote nothing"; }
    log "history: $wrote"
    read -r bytes permits write_ms < <(sed -E 's/.*\(([0-9]+) bytes, ([0-9]+) permits, ([0-9]+) ms\).*/\1 \2 \3/' <<<"$wrote")
    # (c) from the checkpoint: restore, then only the (empty) tail.
    local restored restored_live restore_ms
    serve_timed "$topic" --checkpoint-store "$store"
    restored=$READY_S
    restored_live=$(live_permits)
    grep -q 'restored the state from a checkpoint' "$OUT/serve.log" \
      || { tail -n 20 "$OUT/serve.log" >&2; die "serve did not restore from $store"; }
    restore_ms=$(grep 'restored the state from a checkpoint' "$OUT/serve.log" | sed -E 's/.*ms=([0-9]+).*/\1/')
    [[ $restored_live == "$full_live" ]] \
      || die "restored $restored_live live permits, the full replay $full_live"
    stop_server
    echo "round $full $full_replay $full_live $bytes $permits $write_ms $restored $restore_ms" \
      | tee -a "$OUT/history.txt" >&2
  done
  col() { awk -v c="$1" '$1=="round" {print $c}' "$OUT/history.txt" | paste -sd ' ' -; }
  med() { awk -v c="$1" '$1=="round" {print $c}' "$OUT/history.txt" | median; }
  local full_s replay_s live bytes permits write_ms restored_s restore_ms
  full_s=$(med 2) replay_s=$(med 3) live=$(med 4) bytes=$(med 5) permits=$(med 6)
  write_ms=$(med 7) restored_s=$(med 8) restore_ms=$(med 9)

  # (d) the ingest pause: checkpoints every second while events stream in.
  local live_topic=load-history-live-$$ pause_store=$OUT/checkpoints-live
  log "history: $LIVE_EVENTS events, $HISTORY_PERMITS live permits at most, into $live_topic"
  produce "$live_topic" "$LIVE_EVENTS" --permits "$HISTORY_PERMITS" --zones 20 --clients OC-TOMA,OC_TOMA,OC-UVIC
  rm -rf "$pause_store" && mkdir -p "$pause_store"
  serve_timed "$live_topic" --checkpoint-store "$pause_store" --checkpoint-interval 1
  local pause_live
  pause_live=$(live_permits)
  local stream_events=$((INGEST_RATE * (PAUSE_SAMPLES * 2 + 10)))
  "$BIN" produce --brokers "$KAFKA_BOOTSTRAP" --topic "$live_topic" --events "$stream_events" \
    --rate "$INGEST_RATE" --permits "$HISTORY_PERMITS" --zones 20 --clients OC-TOMA,OC_TOMA,OC-UVIC \
    --seed 7 2>>"$OUT/produce.log" &
  PRODUCER_PID=$!
  sleep 3
  : >"$OUT/pause.txt"
  for _ in $(seq "$PAUSE_SAMPLES"); do
    curl -s "http://$ADDR/metrics" | awk '
      /^permit_stats_checkpoint_ingest_pause_seconds / {p=$NF}
      /^permit_stats_checkpoint_duration_seconds / {d=$NF}
      /^permit_stats_checkpoint_size_bytes / {b=$NF}
      /^permit_stats_consumer_lag_records/ {l+=$NF}
      END {printf "%.6f %.6f %d %d\n", p, d, b, l}' | tee -a "$OUT/pause.txt" >&2
    sleep 2
  done
  local written
  written=$(grep -c 'checkpoint written' "$OUT/serve.log" || true)
  kill "$PRODUCER_PID" 2>/dev/null || true
  wait "$PRODUCER_PID" 2>/dev/null || true
  PRODUCER_PID=""
  stop_server
  local pause_ms pause_max_ms duration_ms lag_max
  pause_ms=$(awk '{print $1 * 1000}' "$OUT/pause.txt" | median)
  pause_max_ms=$(awk '{print $1 * 1000}' "$OUT/pause.txt" | sort -n | tail -n 1)
  duration_ms=$(awk '{print $2 * 1000}' "$OUT/pause.txt" | median)
  lag_max=$(awk '{print $4}' "$OUT/pause.txt" | sort -n | tail -n 1)

  result "### History: restart to ready, $EVENTS records (4 partitions), $live live permits, real Kafka ($(uptime | sed 's/.*load average/load average/'))"
  result ""
  result "| start | to /health/ready, s (median of $REPLAY_ROUNDS) | rounds |"
  result "|---|---|---|"
  result "| \`serve\`, no store: full replay (baseline) | $full_s | $(col 2) |"
  result "| \`serve --checkpoint-store\`: restore + empty tail | **$restored_s** | $(col 8) |"
  result ""
  result "Full replay / from a checkpoint: **$(python3 -c "print(f'{$full_s/$restored_s:.1f}x')")**; the" \
    "full replay's own replay_seconds $replay_s; the restore's log ms= $restore_ms (rounds $(col 9)); goal < 1 s:" \
    "$(python3 -c "print('met' if $restored_s < 1 else 'missed')"). Live permits equal after both: $live."
  result ""
  result "| checkpoint (\`permit-stats checkpoint\`) | median of $REPLAY_ROUNDS |"
  result "|---|---|"
  result "| size, bytes | $bytes ($(col 5)) |"
  result "| permits in it (tombstones included) | $permits |"
  result "| bytes per live permit | $(python3 -c "print(f'{$bytes/max($live,1):.1f}')") |"
  result "| bytes per permit held | $(python3 -c "print(f'{$bytes/max($permits,1):.1f}')") |"
  result "| encode + write, ms | $write_ms ($(col 7)) |"
  result ""
  result "Ingest pause while checkpoints are cut every second under $INGEST_RATE events/s ($pause_live live" \
    "permits at start; $PAUSE_SAMPLES scrapes 2 s apart; $written checkpoints written):"
  result ""
  result "| gauge | median | max |"
  result "|---|---|---|"
  result "| permit_stats_checkpoint_ingest_pause_seconds, ms | $pause_ms | $pause_max_ms |"
  result "| permit_stats_checkpoint_duration_seconds, ms | $duration_ms | $(awk '{print $2 * 1000}' "$OUT/pause.txt" | sort -n | tail -n 1) |"
  result ""
  result "Consumer lag at the scrapes: at most $lag_max records."
  result ""
}

# renice_http N: sets the nice value of the service's HTTP worker threads (named http-*) to N.
renice_http() {
  local task
  for task in /proc/"$SERVER_PID"/task/*; do
    [[ $(cat "$task/comm" 2>/dev/null) == http-* ]] && renice -n "$1" -p "${task##*/}" >/dev/null
  done
  return 0
}

# Reads never make the answers stale: produce->visible p99 while wrk -c32 saturates the stats
# request, beside a bare consumer's produce->receive p99 on the same records at the same moment
# (both from e2e `freshness`); and the same without the read load. READ_FRESH_NICE (default "0")
# lists nice values given to the HTTP worker threads (renice, same binary), alternated per round;
# READ_FRESH_WRITES=N adds N events/s of other clients' writes to the topic throughout.
section_read-fresh() {
  local topic=load-readfresh-$$ tokens_out stats_token fresh_token nice line
  produce "$topic" 200000 --permits 50000 --zones 20
  tokens_out=$(tokens OC-TOMA FRESH)
  stats_token=$(sed -n 1p <<<"$tokens_out")
  fresh_token=$(sed -n 2p <<<"$tokens_out")
  serve "$topic"
  lua_post "$OUT/stats.lua" "$stats_token" ''
  local stats_url="http://$ADDR/api/OC-TOMA/v1/permits/stats"
  local writes=${READ_FRESH_WRITES:-0} also=""
  if ((writes > 0)); then
    # Other clients' writes into the same topic for every round: ingest busy, as in production.
    "$BIN" produce --brokers "$KAFKA_BOOTSTRAP" --topic "$topic" --rate "$writes" \
      --events $((writes * ROUNDS * 2 * (FRESH_SECONDS + 25))) --permits 50000 --zones 20 \
      --seed 9 2>>"$OUT/produce.log" &
    PRODUCER_PID=$!
    also=", with $writes events/s of other writes"
    sleep 2
  fi
  : >"$OUT/read-fresh.txt"
  for round in $(seq "$ROUNDS"); do
    for nice in quiet ${READ_FRESH_NICE:-0}; do
      local wrk_pid="" reads=""
      if [[ $nice != quiet ]]; then
        renice_http "$nice"
        wrk -t1 -c32 -d"$((FRESH_SECONDS + 20))s" -s "$OUT/stats.lua" "$stats_url" \
          >"$OUT/wrk-read-fresh-$nice-$round.txt" 2>&1 &
        wrk_pid=$!
        sleep 2
      fi
      line=$(e2e freshness "$KAFKA_BOOTSTRAP" "$topic" "$ADDR" "$fresh_token" "$FRESH_RATE" "$FRESH_SECONDS")
      if [[ -n $wrk_pid ]]; then
        kill -INT "$wrk_pid" 2>/dev/null || true
        wait "$wrk_pid" 2>/dev/null || true
        reads=$(awk '/Requests\/sec/ {print int($2)}' "$OUT/wrk-read-fresh-$nice-$round.txt")
      fi
      echo "$nice ${reads:-0} $(json "$line" '["p50_ms"]') $(json "$line" '["p99_ms"]') $(json "$line" '["bare_p50_ms"]') $(json "$line" '["bare_p99_ms"]') $(json "$line" '["not_seen"]')" \
        | tee -a "$OUT/read-fresh.txt" >&2
    done
  done
  renice_http 0 2>/dev/null || true
  if [[ -n ${PRODUCER_PID:-} ]]; then
    kill "$PRODUCER_PID" 2>/dev/null || true
    wait "$PRODUCER_PID" 2>/dev/null || true
    PRODUCER_PID=""
  fi
  result "### Reads and freshness: produce->visible under wrk -c32 on the stats request, $FRESH_RATE events/s for ${FRESH_SECONDS}s$also, beside a bare consumer ($(uptime | sed 's/.*load average/load average/'))"
  result ""
  result "| HTTP workers' nice | reads/s | visible p50 ms | visible p99 ms | bare consumer p50 ms | bare p99 ms | p99 / bare p99 | not seen |"
  result "|---|---|---|---|---|---|---|---|"
  while read -r nice reads p50 p99 bp50 bp99 missing; do
    result "| $([[ $nice == quiet ]] && echo "no read load" || echo "$nice") | $reads | $p50 | $p99 | $bp50 | $bp99 | $(python3 -c "print(f'{$p99/max($bp99,0.01):.1f}x')") | $missing |"
  done <"$OUT/read-fresh.txt"
  result ""
  stop_server
}

result "## Load benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
result ""
for section in "${sections[@]}"; do
  case $section in
    http | replay | memory | freshness | history | read-fresh) "section_$section" ;;
    *) die "unknown section $section (http, replay, memory, freshness, history, read-fresh)" ;;
  esac
done
log "results in $RESULTS"
if [[ $GATE_FAILED == 1 ]]; then die "regression gate: median stats/nginx below MIN_NGINX_RATIO=$MIN_NGINX_RATIO"; fi
