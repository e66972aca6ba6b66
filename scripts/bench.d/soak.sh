# shellcheck shell=bash disable=SC2154  # sourced: the variables come from scripts/bench
# scripts/bench --soak [--live]: sourced by scripts/bench after the broker is up and the
# release binaries are built. Not run alone.
#
# Whether the job's memory and state stay independent of history.
#
# --soak: for each size in BENCH_SOAK_SIZES (default "10000000 30000000"), ingest publishes
# that many generated records (the simulated clock spans weeks to months) into a fresh topic
# of 8 partitions; the dataflow job reads it with the default flags (-w 2, checkpoints,
# --invoice-retention 30d), then again with --invoice-retention off. Reported per run: wall
# time, records/s, peak RSS (/usr/bin/time), RSS sampled every 10 s, and the state topic's
# live entries after the run (what compaction keeps: the newest value of each key, deletions
# dropped) with their bytes.
#
# --soak --live: ingest --live --rate 20000 feeds a fresh topic for BENCH_SOAK_MINUTES (30)
# while the job runs with --epoch 1s --invoice-retention 1m; RSS is sampled every 10 s, the
# slope over the second half is fitted, and every second of the feed must have its epoch in
# epochs.jsonl (exit 1 otherwise).
#
# Results: scripts/bench.d/results/<YYYY-MM-DD>-soak.json (or -soak-live.json).
# Uses from scripts/bench: ROOT D broker work say die PARTITIONS TIME.

mkdir -p "$work" "$D/results"

# rss_sampler PID FILE: appends "seconds rss_kb" every 10 s while PID lives.
rss_sampler() {
  local pid=$1 file=$2 start=$SECONDS
  : >"$file"
  while kill -0 "$pid" 2>/dev/null; do
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n $rss ]] && echo "$((SECONDS - start)) $rss" >>"$file"
    sleep 10
  done
}

# state_size TOPIC: "entries bytes" of the newest value of each key (tombstones drop a key).
state_size() {
  kcat -C -b "$broker" -t "$1" -e -q -X isolation.level=read_committed -f '%k\t%S\n' 2>/dev/null |
    python3 -c '
import sys
live = {}
for line in sys.stdin:
    key, _, size = line.rstrip("\n").rpartition("\t")
    if int(size) < 0:
        live.pop(key, None)
    else:
        live[key] = len(key) + int(size)
print(len(live), sum(live.values()))'
}

# run_job NAME TOPIC RECORDS -- FLAGS...: the job under /usr/bin/time with RSS sampling;
# appends a JSON row to $rows_file.
run_job() {
  local name=$1 topic=$2 records=$3
  shift 4
  local job="soak-$name-$$" out="$work/soak-$name" tf="$work/soak-$name.time"
  say "$name: dataflow $* over $records records"
  $TIME -f '%e %U %S %M' -o "$tf" target/release/dataflow -t "$topic" -b "$broker" \
    --job-id "$job" --reset -o "$out" --sinks jsonl --progress-interval 0s "$@" \
    >/dev/null 2>"$work/soak-$name.log" &
  local pid=$!
  # /usr/bin/time's child is the job.
  sleep 1
  local child
  child="$(pgrep -P "$pid" | head -n 1 || true)"
  rss_sampler "${child:-$pid}" "$work/soak-$name.rss" &
  local sampler=$!
  wait "$pid" || die "$name: the job failed (log: $work/soak-$name.log)"
  wait "$sampler" 2>/dev/null || true
  read -r wall user sys rss < <(tail -n 1 "$tf")
  read -r entries bytes < <(state_size "retail-aggregates.checkpoints.$job")
  local lines
  lines="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["lines"])' "$out/summary.json")"
  python3 - "$name" "$records" "$wall" "$user" "$sys" "$rss" "$entries" "$bytes" "$lines" \
    "$work/soak-$name.rss" >>"$rows_file" <<'PY'
import json, sys
name, records, wall, user, sys_, rss, entries, size, lines, series = sys.argv[1:]
samples = [tuple(map(int, l.split())) for l in open(series) if l.strip()]
print(json.dumps({
    "name": name, "records": int(records), "wall": float(wall),
    "cpu": round(float(user) + float(sys_), 2),
    "records_per_sec": round(int(records) / float(wall)),
    "max_rss_kb": int(rss), "state_entries": int(entries), "state_bytes": int(size),
    "lines": int(lines), "rss_every_10s_kb": samples,
}))
PY
  printf '  %-22s %7.1f s  %8d rec/s  peak RSS %5d MB  state %8d entries %6d KB\n' "$name" \
    "$wall" "$(python3 -c "print(round($records / $wall))")" $((rss / 1024)) "$entries" \
    $((bytes / 1024)) >&2
  scripts/kafka topics --delete --topic "retail-aggregates.checkpoints.$job" >/dev/null 2>&1 || true
}

if ((live)); then
  minutes="${BENCH_SOAK_MINUTES:-30}"
  results="$D/results/$(date -u +%F)-soak-live.json"
  topic="bench-soak-live-$$"
  rows_file="$work/soak-live-rows.jsonl"
  : >"$rows_file"
  out="$work/soak-live"
  say "live soak: ingest --live --rate 20000 for $minutes min; dataflow --epoch 1s --invoice-retention 1m"
  target/release/ingest --generate $((20000 * 60 * minutes)) --live --rate 20000 --topic "$topic" \
    -b "$broker" --partitions "$PARTITIONS" >/dev/null 2>"$work/soak-live-ingest.log" &
  feed=$!
  # ingest creates the topic before it publishes.
  sleep 5
  target/release/dataflow -t "$topic" -b "$broker" --job-id "soak-live-$$" --reset -o "$out" \
    --sinks jsonl --epoch 1s --invoice-retention 1m --idle-timeout 5s --progress-interval 0s \
    -w 2 >/dev/null 2>"$work/soak-live.log" &
  job=$!
  rss_sampler "$job" "$work/soak-live.rss" &
  sampler=$!
  wait "$feed" || die "ingest failed (log: $work/soak-live-ingest.log)"
  # The last epochs close once the partitions are idle; then stop the job.
  sleep 15
  kill -INT "$job"
  wait "$job" || true
  wait "$sampler" 2>/dev/null || true
  python3 - "$work/soak-live.rss" "$out/epochs.jsonl" "$results" "$minutes" <<'PY'
import json, sys, datetime
series_path, epochs_path, results, minutes = sys.argv[1:]
samples = [tuple(map(int, l.split())) for l in open(series_path) if l.strip()]
half = [s for s in samples if s[0] >= samples[-1][0] / 2]
n = len(half)
mx = sum(t for t, _ in half) / n
my = sum(r for _, r in half) / n
slope = sum((t - mx) * (r - my) for t, r in half) / max(1e-9, sum((t - mx) ** 2 for t, _ in half))
keys = sorted({json.loads(l)["key"] for l in open(epochs_path)})
stamps = [datetime.datetime.fromisoformat(k) for k in keys]
gaps = [(a, b) for a, b in zip(stamps, stamps[1:]) if (b - a).total_seconds() != 1]
out = {
    "minutes": int(minutes), "rss_every_10s_kb": samples,
    "second_half_slope_kb_per_min": round(slope * 60, 1),
    "second_half_mean_kb": round(my), "epochs": len(keys), "missing_epoch_gaps": len(gaps),
}
json.dump(out, open(results, "w"), indent=1)
# A small plot of the RSS series beside the results (SVG, no plotting library needed).
W, H, pad = 600, 200, 30
t_max = max(t for t, _ in samples) or 1
r_max = max(r for _, r in samples) * 1.1
points = " ".join(f"{pad + (W - 2 * pad) * t / t_max:.1f},{H - pad - (H - 2 * pad) * r / r_max:.1f}"
                  for t, r in samples)
svg = f'''<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">
<rect width="{W}" height="{H}" fill="white"/>
<line x1="{pad}" y1="{H - pad}" x2="{W - pad}" y2="{H - pad}" stroke="#888"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{H - pad}" stroke="#888"/>
<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{points}"/>
<text x="{pad}" y="{pad - 8}">dataflow RSS (MB), ingest --live --rate 20000, --epoch 1s --invoice-retention 1m; max {r_max / 1.1 / 1024:.0f} MB</text>
<text x="{pad}" y="{H - 10}">0</text><text x="{W - pad - 40}" y="{H - 10}">{t_max // 60} min</text>
<text x="2" y="{H - pad}">0</text><text x="2" y="{pad + 4}">{r_max / 1024:.0f}</text>
</svg>
'''
open(results.replace(".json", ".svg"), "w").write(svg)
print(f"live soak: {len(keys)} epochs, {len(gaps)} gaps; RSS second half mean {my / 1024:.0f} MB, "
      f"slope {slope * 60 / 1024:+.2f} MB/min; peak {max(r for _, r in samples) / 1024:.0f} MB")
print(f"results: {results}")
sys.exit(1 if gaps else 0)
PY
  status=$?
  scripts/kafka topics --delete --topic "$topic" >/dev/null 2>&1 || true
  exit "$status"
fi

results="$D/results/$(date -u +%F)-soak.json"
rows_file="$work/soak-rows.jsonl"
: >"$rows_file"
for size in ${BENCH_SOAK_SIZES:-10000000 30000000}; do
  topic="bench-soak-$size-$$"
  say "publishing $size generated records into $topic"
  target/release/ingest --generate "$size" --seed 7 --topic "$topic" -b "$broker" \
    --partitions "$PARTITIONS" >/dev/null 2>"$work/soak-ingest.log" ||
    die "ingest failed (log: $work/soak-ingest.log)"
  run_job "$((size / 1000000))M" "$topic" "$size" -- -w 2 --until-end
  run_job "$((size / 1000000))M-retention-off" "$topic" "$size" -- -w 2 --until-end \
    --invoice-retention off
  scripts/kafka topics --delete --topic "$topic" >/dev/null 2>&1 || true
done
python3 - "$rows_file" "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
print(f"{'run':<22} {'records':>10} {'rec/s':>9} {'CPU s':>7} {'peak RSS MB':>12} {'state entries':>14} {'state KB':>9}")
for r in rows:
    print(f"{r['name']:<22} {r['records']:>10} {r['records_per_sec']:>9} {r['cpu']:>7} "
          f"{r['max_rss_kb'] // 1024:>12} {r['state_entries']:>14} {r['state_bytes'] // 1024:>9}")
print(f"results: {sys.argv[2]}")
PY
exit 0
