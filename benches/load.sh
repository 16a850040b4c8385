#!/usr/bin/env bash
# The load benchmark (DESIGN §9, issue 6): the resolver against Knot DNS
# serving the same names from a zone file, in the same run.
#
#   bash benches/load.sh            # full run, release binaries (~8 minutes)
#   bash benches/load.sh --smoke    # a few seconds, low rates, checks (CI)
#
# Starts consul-sim (dc1 and dc2, each with SERVICES services × 3
# instances, all passing), the resolver (`queries.implicit`, log level
# warn; its UDP fast path), a second resolver with `dns.udp_fast_path =
# false` (hickory-server's UDP loop, shown as "hickory"), knotd with a
# `consul.` zone holding exactly what the resolver answers for the
# benchmark names (read back from it with `dig`), and the I/O floor
# (examples/udp-floor.rs: the fast path's system calls, no DNS work; every
# answer NXDOMAIN). Then, per rate, runs dnsperf against the resolver and
# Knot (taking turns to go first, round by round), then the floor and the
# hickory path, pausing after each run, at
# a ladder of fixed rates (-Q) and at saturation (no -Q), and prints per
# server and rate: qps achieved, loss %, server CPU µs per answered query
# (utime+stime from /proc/PID/stat) and dnsperf's mean latency; per round,
# the CPU figure and the busiest server thread's share of the CPU; then the
# resolver/Knot, floor/Knot and hickory/Knot ratios.
# dnsperf runs on the same cores as the servers. Loopback only; every
# child is killed on exit.
#
# Environment: LOAD_NET (default 127.0.231: the resolver and consul-sim
# listen on .1, Knot on .2, the hickory-path resolver on .3, the floor on .4), LOAD_RATES (the fixed-rate ladder),
# LOAD_SECONDS / LOAD_SAT_SECONDS (dnsperf -l), LOAD_REPEAT (rounds of
# the whole ladder, pooled: default 3, 1 in --smoke), LOAD_SETTLE (seconds
# of pause after each dnsperf run: default 1, 0 in --smoke), SERVICES,
# KNOT_UDP_WORKERS (default: nproc, knotd's own default),
# LOAD_UDP_THREADS (the resolver's dns.udp_threads; default 0, one per two cores),
# LOAD_CLIENTS (dnsperf -c, its sockets: default 32; with few, how
# SO_REUSEPORT hashes their ports onto Knot's workers decides Knot's cost),
# LOAD_PROFILE (release, or debug: the default in --smoke, which reuses
# the binaries `cargo test` built), LOAD_NO_BUILD=1 (use target/PROFILE
# as it is).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  *) echo "usage: bash benches/load.sh [--smoke]" >&2; exit 2 ;;
esac

install_hint="apt-get install -y knot dnsperf bind9-dnsutils curl"
find_program() {
  local name=$1 dir
  for dir in ${PATH//:/ } /usr/sbin /sbin; do
    if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
  done
  echo "benches/load.sh: \`$name\` is not installed; this benchmark needs it: $install_hint" >&2
  exit 1
}
knotd=$(find_program knotd)
dnsperf=$(find_program dnsperf)
dig=$(find_program dig)
curl=$(find_program curl)

if [ $smoke = 1 ]; then
  profile=${LOAD_PROFILE:-debug}
  services=${SERVICES:-20}
  rates=${LOAD_RATES:-"2000"}
  seconds=${LOAD_SECONDS:-2}
  sat_seconds=${LOAD_SAT_SECONDS:-1}
  repeat=${LOAD_REPEAT:-1}
  settle=${LOAD_SETTLE:-0}
else
  profile=${LOAD_PROFILE:-release}
  services=${SERVICES:-100}
  rates=${LOAD_RATES:-"20000 40000 60000 80000 100000"}
  seconds=${LOAD_SECONDS:-6}
  sat_seconds=${LOAD_SAT_SECONDS:-10}
  repeat=${LOAD_REPEAT:-3}
  settle=${LOAD_SETTLE:-1}
fi
net=${LOAD_NET:-127.0.231}
knot_workers=${KNOT_UDP_WORKERS:-$(nproc)}
clients=${LOAD_CLIENTS:-32}
clk_tck=$(getconf CLK_TCK)

resolver_dns=$net.1:8600 admin=$net.1:8653
hickory_dns=$net.3:8600 hickory_admin=$net.3:8653
dc1=$net.1:8500 dc2=$net.1:8501
knot_ip=$net.2 knot_port=8600
floor_dns=$net.4:8600

bin=target/$profile
if [ -z "${LOAD_NO_BUILD:-}" ]; then
  if [ "$profile" = release ]; then
    cargo build --release --bins -p consul-failover-dns -p consul-sim --example udp-floor
  else
    cargo build --bins -p consul-failover-dns -p consul-sim --example udp-floor
  fi
fi

work=$(mktemp -d)
pids=()
cleanup() {
  local status=$? pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ $status -ne 0 ]; then
    for log in "$work"/*.log; do
      [ -f "$log" ] || continue
      echo "---- $(basename "$log") (last 20 lines) ----" >&2
      tail -n 20 "$log" >&2
    done
  fi
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "benches/load.sh: $*" >&2; exit 1; }

# Waits (at most $1 seconds) until the command after it succeeds; fails
# if process $2 died meanwhile.
wait_for() {
  local limit=$1 pid=$2 what=$3; shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "$what exited while starting"
    [ $SECONDS -lt $deadline ] || fail "$what not up after ${limit}s"
    sleep 0.05
  done
}

#------------ consul-sim ------------------------------------------------------

# dc1 and dc2: nodes n1..n3, each running every service svc-NNN at
# 10.D.S.N, all checks passing.
{
  echo "["
  first=1
  for d in 1 2; do
    for n in 1 2 3; do
      for ((s = 1; s <= services; s++)); do
        name=$(printf 'svc-%03d' "$s")
        [ $first = 1 ] || echo ","
        first=0
        printf '{"Datacenter":"dc%d","Node":"n%d","Address":"10.%d.0.%d",' "$d" "$n" "$d" "$n"
        printf '"Service":{"ID":"%s","Service":"%s","Address":"10.%d.%d.%d","Port":%d},' \
          "$name" "$name" "$d" $((s % 250)) "$n" $((8000 + s))
        printf '"Check":{"CheckID":"%s-check","Name":"%s health","Status":"passing","ServiceID":"%s"}}' \
          "$name" "$name" "$name"
      done
    done
  done
  echo "]"
} >"$work/seed.json"

# Two resolvers with up to 2 × SERVICES plain-HTTP watches each share one
# client address: Consul's connection limit (200 per client) and the
# resolvers' consul.max_connections are both lifted, as an operator would
# for this many HTTP/1.1 watches (HTTPS would need neither).
"$bin/consul-sim" --dc "dc1=$dc1" --dc "dc2=$dc2" --seed "$work/seed.json" \
  --max-conns-per-client 0 >"$work/consul-sim.log" 2>&1 &
sim_pid=$!
pids+=("$sim_pid")
wait_for 15 "$sim_pid" consul-sim "$curl" -sf "http://$dc2/v1/catalog/services"

#------------ the resolver ----------------------------------------------------

# resolver_config DNS ADMIN FAST_PATH
resolver_config() {
  cat <<EOF
[dns]
listen = ["$1"]
udp_fast_path = $3
udp_threads = ${LOAD_UDP_THREADS:-0}

[consul]
address = "http://$dc1"
datacenter = "dc1"
max_connections = 1000

[queries]
implicit = true

[queries.defaults]
failover = { datacenters = ["dc1", "dc2"] }

[admin]
listen = "$2"
EOF
}
resolver_config "$resolver_dns" "$admin" true >"$work/resolver.toml"
resolver_config "$hickory_dns" "$hickory_admin" false >"$work/hickory.toml"
RUST_LOG=warn "$bin/consul-failover-dns" run -c "$work/resolver.toml" \
  >"$work/resolver.log" 2>&1 &
resolver_pid=$!
pids+=("$resolver_pid")
RUST_LOG=warn "$bin/consul-failover-dns" run -c "$work/hickory.toml" \
  >"$work/hickory.log" 2>&1 &
hickory_pid=$!
pids+=("$hickory_pid")
wait_for 30 "$resolver_pid" "the resolver" "$curl" -sf "http://$admin/ready"
wait_for 30 "$hickory_pid" "the hickory-path resolver" "$curl" -sf "http://$hickory_admin/ready"

#------------ names -----------------------------------------------------------

# Per service: <svc>.query.consul A, <svc>.service.consul SRV and A; and
# per two services one NXDOMAIN name under each of query. and service.
: >"$work/positive.txt"
: >"$work/queries.txt"
for ((s = 1; s <= services; s++)); do
  name=$(printf 'svc-%03d' "$s")
  printf '%s.query.consul A\n%s.service.consul SRV\n%s.service.consul A\n' \
    "$name" "$name" "$name" >>"$work/positive.txt"
  if ((s % 2 == 0)); then
    printf 'nx-%03d.query.consul A\nnx-%03d.service.consul A\n' "$s" "$s" >>"$work/queries.txt"
  fi
done
cat "$work/positive.txt" >>"$work/queries.txt"
total_names=$(wc -l <"$work/queries.txt")
positive_names=$(wc -l <"$work/positive.txt")

# dig -f wants "name type" reversed to "name -t type"; this form works.
sed 's/ \([A-Z]*\)$/ -t \1/' "$work/positive.txt" >"$work/dig.txt"
dig_batch() { # dig_batch DNS
  timeout 60 "$dig" "@${1%:*}" -p "${1#*:}" +time=2 +tries=2 \
    +noall +answer +additional +nocookie -f "$work/dig.txt"
}
# The first query for a service starts its watches; the second pass reads
# the warm answers.
dig_batch "$resolver_dns" >/dev/null
dig_batch "$hickory_dns" >/dev/null
dig_batch "$resolver_dns" >"$work/answers.txt"

#------------ Knot ------------------------------------------------------------

soa=$(timeout 10 "$dig" "@${resolver_dns%:*}" -p "${resolver_dns#*:}" +time=2 +tries=2 \
  +noall +answer consul. SOA)
[ -n "$soa" ] || fail "the resolver gave no SOA for consul."
{
  echo "$soa"
  echo "consul. 0 IN NS ns.consul."
  echo "ns.consul. 0 IN A $knot_ip"
  grep -v '^;' "$work/answers.txt" | grep -v '^$' | sort -u
} >"$work/consul.zone"
for ((s = 1; s <= services; s++)); do
  name=$(printf 'svc-%03d' "$s")
  for owner_type in "$name.query.consul. A" "$name.service.consul. SRV" "$name.service.consul. A"; do
    set -- $owner_type
    grep -q "^$1[[:space:]].*IN[[:space:]]$2[[:space:]]" "$work/consul.zone" \
      || fail "the resolver gave no $2 for $1; its answers are in consul.zone"
  done
done

mkdir -p "$work/knot"
cat >"$work/knot.conf" <<EOF
server:
    rundir: "$work/knot"
    listen: $knot_ip@$knot_port
    udp-workers: $knot_workers
    tcp-workers: 1
    background-workers: 1

control:
    listen: "$work/knot/knot.sock"

database:
    storage: "$work/knot"

log:
  - target: stderr
    any: warning

zone:
  - domain: consul.
    storage: "$work"
    file: "consul.zone"
EOF
"$knotd" -c "$work/knot.conf" >"$work/knotd.log" 2>&1 &
knot_pid=$!
pids+=("$knot_pid")
knot_soa() {
  [ -n "$(timeout 5 "$dig" "@$knot_ip" -p "$knot_port" +time=1 +tries=1 +short consul. SOA)" ]
}
wait_for 15 "$knot_pid" knotd knot_soa

#------------ the I/O floor ---------------------------------------------------

# Its responses are padded to 120 bytes, the mean size of the resolver's
# and Knot's for these names (the report's "resp B" shows all of them).
"$bin/examples/udp-floor" "$floor_dns" 120 >"$work/floor.log" 2>&1 &
floor_pid=$!
pids+=("$floor_pid")
floor_up() {
  timeout 5 "$dig" "@${floor_dns%:*}" -p "${floor_dns#*:}" +time=1 +tries=1 +noall +comments \
    consul. SOA | grep -q 'status: NXDOMAIN'
}
wait_for 15 "$floor_pid" "the I/O floor" floor_up

#------------ dnsperf ---------------------------------------------------------

stat_ticks() { # utime + stime in the stat file $1, in clock ticks
  local stat
  stat=$(<"$1") || return 1
  stat=${stat##*) }
  set -- $stat
  echo $((${12} + ${13}))
}

ticks() { # utime + stime of process $1, in clock ticks
  stat_ticks "/proc/$1/stat"
}

threads() { # per thread of process $1: "tid ticks" (utime + stime)
  local task ticks
  for task in /proc/"$1"/task/*; do
    ticks=$(stat_ticks "$task/stat") || continue
    echo "${task##*/} $ticks"
  done
}

# busiest BEFORE AFTER: the share (%) of the process's CPU between two
# `threads` listings taken by its busiest thread (SO_REUSEPORT spreads
# dnsperf's sockets over a server's UDP threads by a hash of their ports,
# so with few sockets how a run's load splits changes run to run).
busiest() {
  awk 'NR == FNR { before[$1] = $2; next }
    { d = $2 - before[$1]; total += d; if (d > top) top = d }
    END { printf "%d", (total > 0 ? 100 * top / total : 0) }' "$1" "$2"
}

# run SERVER RATE SECONDS: one dnsperf run; appends a row to rows.txt:
# server rate sent completed lost qps cpu_ticks noerror nxdomain
# mean_response_bytes busiest_thread_% mean_latency_µs
run() {
  local server=$1 rate=$2 secs=$3 ip port pid before after out
  if [ "$server" = resolver ]; then
    ip=${resolver_dns%:*} port=${resolver_dns#*:} pid=$resolver_pid
  elif [ "$server" = hickory ]; then
    ip=${hickory_dns%:*} port=${hickory_dns#*:} pid=$hickory_pid
  elif [ "$server" = floor ]; then
    ip=${floor_dns%:*} port=${floor_dns#*:} pid=$floor_pid
  else
    ip=$knot_ip port=$knot_port pid=$knot_pid
  fi
  local args=(-s "$ip" -p "$port" -d "$work/queries.txt" -l "$secs" -c "$clients" -T 1 -q 200 -t 2)
  [ "$rate" = max ] || args+=(-Q "$rate")
  threads "$pid" >"$work/threads-before"
  before=$(ticks "$pid")
  out=$(timeout -k 2 $((secs + 15)) "$dnsperf" "${args[@]}" 2>&1) \
    || fail "dnsperf against $server at $rate failed:"$'\n'"$out"
  after=$(ticks "$pid")
  threads "$pid" >"$work/threads-after"
  kill -0 "$pid" 2>/dev/null || fail "$server died during the run"
  echo "$out" >>"$work/dnsperf-$server.log"
  local sent completed lost qps noerror nxdomain
  sent=$(awk '/Queries sent:/ {print $3}' <<<"$out")
  completed=$(awk '/Queries completed:/ {print $3}' <<<"$out")
  lost=$(awk '/Queries lost:/ {print $3}' <<<"$out")
  qps=$(awk '/Queries per second:/ {print $4}' <<<"$out")
  noerror=$(awk '{ for (i = 1; i < NF; i++) if ($i == "NOERROR") print $(i + 1) }' <<<"$out")
  nxdomain=$(awk '{ for (i = 1; i < NF; i++) if ($i == "NXDOMAIN") print $(i + 1) }' <<<"$out")
  size=$(grep -o 'response [0-9]*' <<<"$out" | awk '{print $2}')
  latency=$(awk '/Average Latency/ {printf "%.0f", $4 * 1e6}' <<<"$out")
  [ -n "$sent" ] && [ -n "$completed" ] && [ -n "$qps" ] \
    || fail "dnsperf printed no statistics:"$'\n'"$out"
  echo "$server $rate $sent $completed ${lost:-0} $qps $((after - before)) ${noerror:-0} ${nxdomain:-0} ${size:-0}" \
    "$(busiest "$work/threads-before" "$work/threads-after")" "${latency:-0}" \
    >>"$work/rows.txt"
  # A server still working off the queries of its run would take CPU
  # from the next one's.
  sleep "$settle"
}

echo
echo "load benchmark: $services services × 3 instances in dc1 and dc2; $total_names names" \
  "($positive_names answered, $((total_names - positive_names)) NXDOMAIN);" \
  "Knot udp-workers $knot_workers; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r);" \
  "$profile binaries; dnsperf -c $clients -T 1 -q 200 on the same cores; $repeat round(s) pooled;" \
  "resolver and Knot take turns going first; ${settle} s pause after each run"
: >"$work/rows.txt"
started=$SECONDS
# The resolver and Knot take turns going first, round by round; then the
# floor, and the hickory path, far the costliest, last.
for ((round = 1; round <= repeat; round++)); do
  if ((round % 2)); then order="resolver knot floor hickory"; else order="knot resolver floor hickory"; fi
  for rate in $rates max; do
    secs=$seconds
    [ "$rate" != max ] || secs=$sat_seconds
    for server in $order; do
      run "$server" "$rate" "$secs"
    done
  done
done

#------------ report ----------------------------------------------------------

awk -v tck="$clk_tck" -v smoke="$smoke" '
  function cpu_us(ticks, done) { return (done > 0 ? ticks * 1e6 / tck / done : 0) }
  {
    # Rounds are pooled: CPU over all answers, qps averaged, loss summed.
    server = $1; rate = $2; key = server SUBSEP rate
    runs[key]++; sent[key] += $3; done[key] += $4; lost[key] += $5; qsum[key] += $6
    ticks[key] += $7; nxs[key] += $9; size[key] = $10; waited[key] += $12 * $4
    rounds[key] = rounds[key] sprintf(" %6.2f (%3d %%)", cpu_us($7, $4), $11)
    if (!(rate in seen)) { seen[rate] = 1; order[++n] = rate }
  }
  END {
    for (key in runs) {
      split(key, part, SUBSEP)
      loss[key] = (sent[key] > 0 ? 100 * lost[key] / sent[key] : 100)
      achieved[key] = qsum[key] / runs[key]; us[key] = cpu_us(ticks[key], done[key])
      cores[key] = ticks[key] / tck / runs[key]
      nx[key] = (done[key] > 0 ? 100 * nxs[key] / done[key] : 0)
      latency[key] = (done[key] > 0 ? waited[key] / done[key] : 0)
      if (part[2] != "max" && lost[key] == 0 && achieved[key] > best[part[1]]) best[part[1]] = achieved[key]
    }
    printf "\n%-9s %8s %10s %8s %8s %7s %8s %7s %7s\n", "server", "rate", "qps", "loss %", "NXDOM %", "resp B", "CPU s/run", "µs/ans", "lat µs"
    split("resolver floor hickory knot", servers, " ")
    for (i = 1; i <= n; i++) for (s = 1; s <= 4; s++) {
      server = servers[s]; key = server SUBSEP order[i]
      printf "%-9s %8s %10.0f %8.3f %8.1f %7d %8.2f %7.2f %7.0f\n", server, order[i], achieved[key], loss[key], nx[key], size[key], cores[key], us[key], latency[key]
    }
    printf "\nper round: CPU µs per answered query (the busiest thread'"'"'s share of the server'"'"'s CPU)\n"
    for (i = 1; i <= n; i++) for (s = 1; s <= 4; s++) {
      server = servers[s]; key = server SUBSEP order[i]
      printf "  %-9s %8s:%s\n", server, order[i], rounds[key]
    }
    for (v = 1; v <= 3; v++) {
      mine = servers[v]
      printf "\n%s / Knot (same run):\n", mine
      for (i = 1; i <= n; i++) {
        r = mine SUBSEP order[i]; k = "knot" SUBSEP order[i]
        printf "  CPU µs per answered query at %-6s: %6.2f / %6.2f = %.2f\n", order[i], us[r], us[k], (us[k] > 0 ? us[r] / us[k] : 0)
      }
      r = mine SUBSEP "max"; k = "knot" SUBSEP "max"
      printf "  qps at saturation:                 %6.0f / %6.0f = %.2f\n", achieved[r], achieved[k], (achieved[k] > 0 ? achieved[r] / achieved[k] : 0)
      printf "  qps at 0%% loss (highest fixed rate with no loss): %.0f / %.0f = %s\n", best[mine], best["knot"], (best["knot"] > 0 ? sprintf("%.2f", best[mine] / best["knot"]) : "n/a")
    }
    printf "\nresolver / floor (the floor: the same system calls, no DNS work):\n"
    for (i = 1; i <= n; i++) {
      r = "resolver" SUBSEP order[i]; f = "floor" SUBSEP order[i]
      printf "  CPU µs per answered query at %-6s: %6.2f / %6.2f = %.2f\n", order[i], us[r], us[f], (us[f] > 0 ? us[r] / us[f] : 0)
    }
  }' "$work/rows.txt"
echo "(dnsperf time $((SECONDS - started)) s; CLK_TCK $clk_tck)"

# Checks: every server answers ≥ 99 % of the fixed-rate queries; the
# resolver, Knot and the hickory path with the same share of NXDOMAIN
# (the same names, the same answers; the floor answers NXDOMAIN to all).
status=0
while read -r server rate sent completed lost qps ticks noerror nxdomain _; do
  [ "$rate" = max ] && continue
  if ((completed * 100 < sent * 99)); then
    echo "benches/load.sh: $server answered $completed of $sent at $rate qps (< 99 %)" >&2
    status=1
  fi
  [ "$server" = floor ] && continue
  expected_nx=$((total_names - positive_names))
  if ((completed > 0)) && (((nxdomain * total_names - expected_nx * completed) ** 2 > (completed * total_names / 50) ** 2)); then
    echo "benches/load.sh: $server: $nxdomain NXDOMAIN of $completed, expected ~$((100 * expected_nx / total_names)) %" >&2
    status=1
  fi
done <"$work/rows.txt"
if [ $status -ne 0 ]; then
  if [ $smoke = 1 ]; then fail "smoke run failed"; fi
  echo "benches/load.sh: (full run: the figures above include loss)" >&2
fi
[ $smoke = 0 ] || echo "benches/load.sh --smoke: ok"
