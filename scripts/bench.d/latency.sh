# shellcheck shell=bash disable=SC2154  # sourced: the variables come from scripts/bench
# scripts/bench --latency: sourced by scripts/bench after its set-up (broker up,
# release binaries, pyspark venv, Spark Kafka connector jars). Not run alone.
#
# Per system, on a fresh topic of 8 partitions: start the consumer (the dataflow
# job, or the PySpark job), then `ingest --generate N --live --rate R`, which
# stamps every invoice with the current UTC second; record when each 1 s epoch's
# result becomes visible; stop everything. latency.py turns the arrivals into
# p50/p99/max of (emit time - epoch end) and writes the results JSON. The dataflow
# job also writes the PostgreSQL of scripts/postgres (BENCH_POSTGRES=0: not), whose
# epochs table is polled for when each epoch's row becomes visible.
#
# Uses from scripts/bench: ROOT D broker venv spark_jars work quick say die.

lat_rate="${BENCH_LATENCY_RATE:-100000}"
lat_seconds="${BENCH_LATENCY_SECONDS:-$( ((quick)) && echo 30 || echo 120)}"
lat_warmup="${BENCH_LATENCY_WARMUP:-$( ((quick)) && echo 5 || echo 10)}"
lat_workers="${BENCH_LATENCY_WORKERS:-1}"
lat_systems="${BENCH_LATENCY_SYSTEMS:-dataflow,pyspark}"
lat_drain="${BENCH_LATENCY_DRAIN:-60}"
# The goals: p99 of the committed latency (a read_committed consumer sees the epoch's row,
# after the epoch's end) at most 100 ms at 20k records/s and 250 ms at 100k; none at other rates.
case "$lat_rate" in
  20000) GOAL_P99_MS=100 ;;
  100000) GOAL_P99_MS=250 ;;
  *) GOAL_P99_MS="" ;;
esac
GOAL_RATE=$lat_rate
GOAL_PG_P99_MS=200      # and: p99 of (visible in PostgreSQL - visible to read_committed Kafka) <= 200 ms

for v in lat_rate lat_seconds lat_warmup lat_workers lat_drain; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: ${v/lat_/BENCH_LATENCY_} must be a whole number, got '${!v}'" >&2; exit 2; }
done
((lat_rate > 0 && lat_seconds >= 3 && lat_workers > 0)) ||
  { echo "bench: BENCH_LATENCY_RATE and _WORKERS must be > 0, BENCH_LATENCY_SECONDS >= 3" >&2; exit 2; }
run_df=0 run_spark=0
IFS=, read -ra _systems <<<"$lat_systems"
for s in "${_systems[@]}"; do
  case "$s" in
    dataflow) run_df=1 ;;
    pyspark) run_spark=1 ;;
    *) echo "bench: BENCH_LATENCY_SYSTEMS: unknown system '$s' (dataflow, pyspark)" >&2; exit 2 ;;
  esac
done
((run_df || run_spark)) || { echo "bench: BENCH_LATENCY_SYSTEMS is empty" >&2; exit 2; }

run_id="$(date -u +%Y%m%d%H%M%S)"
prefix="bench-latency-$run_id"          # every topic of this run starts with it
pg_url="" pg_schema="bench_latency_$run_id"   # the dataflow job's PostgreSQL tables, if any
lw="$work/latency"
rm -rf "$lw"
mkdir -p "$lw" "$D/results"
records=$((lat_rate * (lat_warmup + lat_seconds + 2)))

# --- background processes and cleanup ------------------------------------------
# Each background process runs in its own session (setsid), so the whole tree
# (spark-submit's JVM and its Python driver, kcat under the watcher) can be
# signalled as one group, by the id we started it with, and Ctrl-C on the
# terminal reaches only this script, whose trap stops them in order.
bg_pids=()
made_topics=0
start_bg() { # start_bg LOG COMMAND...: sets bg_pid
  local log="$1"; shift
  setsid "$@" >"$log" 2>&1 &
  bg_pid=$!
  bg_pids+=("$bg_pid")
}
alive() { kill -0 "$1" 2>/dev/null; }
# stop_bg PID SIGNAL SECONDS: signal the process group, wait, then SIGKILL it.
stop_bg() {
  local pid="$1" sig="$2" secs="$3" i
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -"$sig" -- -"$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    say "pid $pid did not stop after SIG$sig in ${secs} s: killing it"
    kill -KILL -- -"$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
lat_cleanup() {
  local pid
  for pid in "${bg_pids[@]}"; do
    alive "$pid" && stop_bg "$pid" TERM 10
  done
  if ((made_topics)) && [[ ${BENCH_LATENCY_KEEP_TOPICS:-0} != 1 ]]; then
    scripts/kafka topics --delete --topic "$prefix-.*" >/dev/null 2>&1 ||
      say "could not delete the topics $prefix-* (delete them with scripts/kafka topics --delete --topic '$prefix-.*')"
  fi
  if [[ -n $pg_url && ${BENCH_LATENCY_KEEP_TOPICS:-0} != 1 ]]; then
    scripts/postgres psql -q -c "DROP SCHEMA IF EXISTS $pg_schema CASCADE" >/dev/null 2>&1 ||
      say "could not drop the PostgreSQL schema $pg_schema"
  fi
}
trap lat_cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

now() { date +%s.%N; }
create_topic() {
  made_topics=1
  target/release/ingest -b "$broker" --topic "$1" --partitions "$PARTITIONS" --generate 0 \
    >/dev/null 2>"$lw/create-$1.log" ||
    { cat "$lw/create-$1.log" >&2; die "could not create topic $1"; }
}
# wait_for WHAT SECONDS PID TEST...: poll TEST every 0.2 s while PID lives.
wait_for() {
  local what="$1" secs="$2" pid="$3" i; shift 3
  for ((i = 0; i < secs * 5; i++)); do
    "$@" && return 0
    alive "$pid" || return 1
    sleep 0.2
  done
  say "timed out after ${secs} s waiting for $what"
  return 1
}
topic_exists() { kcat -L -b "$broker" -t "$1" 2>/dev/null | grep -q '^ *partition 0,'; }
# CPU accounting over the feed, to tell a slow consumer from a saturated machine:
# all CPUs' busy and total jiffies (/proc/stat), one process's user+sys ticks.
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# live_ingest NAME TOPIC CONSUMER_PID: the steady live feed, in the background so
# Ctrl-C is handled here; sets ing_start/ing_end (unix seconds) and cpu_json, and
# writes $lw/NAME-ingest.json (ingest's summary line).
live_ingest() {
  local name="$1" topic="$2" consumer="$3" rc=0 busy0 total0 busy1 total1 c0 c1 iu is
  say "$name: ingest --live --rate $lat_rate: $records records (${lat_warmup} s warm-up + ${lat_seconds} s measured + 2 s)"
  read -r busy0 total0 < <(machine_ticks)
  c0="$(proc_ticks "$consumer")"
  ing_start="$(now)"
  start_bg "$lw/$name-ingest.log" "$TIME" -f '%U %S' -o "$lw/$name-ingest.time" \
    target/release/ingest -b "$broker" --topic "$topic" --generate "$records" --seed 1 --live --rate "$lat_rate"
  ing_pid=$bg_pid
  wait "$ing_pid" || rc=$?
  ing_end="$(now)"
  c1="$(proc_ticks "$consumer")"
  read -r busy1 total1 < <(machine_ticks)
  ((rc == 0)) || { tail -n 5 "$lw/$name-ingest.log" >&2; die "ingest failed with status $rc (log: $lw/$name-ingest.log)"; }
  grep '^{' "$lw/$name-ingest.log" | tail -n 1 >"$lw/$name-ingest.json"
  read -r iu is < <(tail -n 1 "$lw/$name-ingest.time")
  cpu_json="$(awk -v b="$((busy1 - busy0))" -v t="$((total1 - total0))" -v c="$((c1 - c0))" \
    -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" -v s="$ing_start" -v e="$ing_end" -v iu="$iu" -v is="$is" \
    'BEGIN { w = e - s; printf "{\"machine_busy_pct\":%.1f,\"consumer_cores\":%.2f,\"ingest_cores\":%.2f}", 100 * b / t, c / hz / w, (iu + is) / w }')"
  say "$name: ingest: $(cat "$lw/$name-ingest.json")"
  say "$name: CPU over the feed: $cpu_json (cores used, of $(nproc))"
}
# drain NAME PID ARRIVALS SRC: after the feed, wait (at most BENCH_LATENCY_DRAIN s)
# until the last measured epoch has arrived, so an epoch the consumer is slow to
# emit is measured late rather than counted missing.
drain() {
  local name="$1" pid="$2" arrivals="$3" src="$4" last
  last="$(python3 -c 'import math, sys; print(math.floor(float(sys.argv[1]) - 0.5) - 1)' "$ing_end")"
  wait_for "$name to emit its last measured epoch" "$lat_drain" "$pid" \
    python3 "$D/latency.py" arrived "$arrivals" "$src" "$last" || true
  sleep 1
}
phase_json() { # phase_json SYSTEM ARRIVALS [PROGRESS] [POSTGRES]
  printf '{"system":"%s","arrivals":"%s","ingest_summary":"%s","ingest_started":%s,"ingest_ended":%s,"warmup":%d,"seconds":%d,"rate":%d,"cpu":%s%s%s}\n' \
    "$1" "$2" "$lw/$1-ingest.json" "$ing_start" "$ing_end" "$lat_warmup" "$lat_seconds" "$lat_rate" "$cpu_json" \
    "${3:+,\"progress\":\"$3\"}" "${4:+,\"postgres\":true}" >"$lw/$1-phase.json"
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${load_start%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
  say "warning: the machine is busy (load average $load_start on $(nproc) CPUs): the figures will be noisy"
fi
phases=()

# --- PostgreSQL for the dataflow job ---------------------------------------------------
# The server of scripts/postgres (PG_PORT, PG_CACHE_DIR); the run's tables go to a schema of
# their own, dropped at the end. Its URL reaches the job and the watcher as PGURL, never on a
# command line.
if ((run_df)) && [[ ${BENCH_POSTGRES:-1} == 1 ]]; then
  if pg_url="$(scripts/postgres up 2>/dev/null | tail -n 1)" && [[ $pg_url == postgresql://* ]]; then
    say "PostgreSQL for the dataflow job: $(scripts/postgres status 2>/dev/null | head -n 1), schema $pg_schema"
    export PGURL="$pg_url"
  else
    pg_url=""
    say "no PostgreSQL (scripts/postgres up failed): the dataflow job writes Kafka and the files only"
  fi
fi

# --- the dataflow job ------------------------------------------------------------
df_sinks=jsonl,kafka pg_args=""
if [[ -n $pg_url ]]; then df_sinks=jsonl,kafka,postgres pg_args=" --pg-schema $pg_schema"; fi
cmd_df="target/release/dataflow -b $broker -t $prefix-df --epoch 1s -w $lat_workers --sinks $df_sinks$pg_args --aggregates-topic $prefix-aggregates --checkpoint-topic $prefix-checkpoints --job-id $prefix --group-id $prefix --reset --progress-interval 5s -o $lw/dataflow-out${BENCH_LATENCY_DATAFLOW_ARGS:+ $BENCH_LATENCY_DATAFLOW_ARGS}"
if ((run_df)); then
  say "dataflow: topic $prefix-df, dataflow --epoch 1s -w $lat_workers (exactly-once: Kafka transactions + JSON lines${pg_url:+ + PostgreSQL})"
  create_topic "$prefix-df"
  # shellcheck disable=SC2086  # cmd_df is split on purpose: it is also the recorded command
  start_bg "$lw/dataflow.log" $cmd_df
  df_pid=$bg_pid
  # The job creates its aggregates topic and commits its empty start before it reads.
  wait_for "the dataflow job to create $prefix-aggregates" 60 "$df_pid" topic_exists "$prefix-aggregates" ||
    { tail -n 20 "$lw/dataflow.log" >&2; die "the dataflow job did not start (log: $lw/dataflow.log)"; }
  watch_pg=()
  [[ -n $pg_url ]] && watch_pg=(--pg-table "$pg_schema.epochs" --pg-job "$prefix")
  start_bg "$lw/watch.log" python3 "$D/latency.py" watch --bootstrap "$broker" \
    --topic "$prefix-aggregates" --jsonl "$lw/dataflow-out/epochs.jsonl" --out "$lw/dataflow-arrivals.jsonl" \
    "${watch_pg[@]}"
  watch_pid=$bg_pid
  sleep 2
  live_ingest dataflow "$prefix-df" "$df_pid"
  drain dataflow "$df_pid" "$lw/dataflow-arrivals.jsonl" kafka
  alive "$df_pid" || { tail -n 20 "$lw/dataflow.log" >&2; die "the dataflow job died (log: $lw/dataflow.log)"; }
  stop_bg "$watch_pid" TERM 10
  stop_bg "$df_pid" INT 30
  grep -E "WARN|ERROR" "$lw/dataflow.log" | grep -v PartitionEOF | head -n 5 >&2 || true
  phase_json dataflow "$lw/dataflow-arrivals.jsonl" "" "$pg_url"
  phases+=("$lw/dataflow-phase.json")
fi

# --- PySpark Structured Streaming ------------------------------------------------
cmd_spark="$venv/bin/spark-submit --master local[*] --conf spark.ui.enabled=false --jars $jars/*.jar scripts/bench.d/spark_latency.py --bootstrap $broker --topic $prefix-spark --arrivals A --progress P --checkpoint DIR --ready R --stop S"
if ((run_spark)); then
  say "pyspark: topic $prefix-spark, default trigger (next micro-batch as soon as the last ends), 1 s windows, append mode"
  create_topic "$prefix-spark"
  PYSPARK_PYTHON="$venv/bin/python" PYSPARK_DRIVER_PYTHON="$venv/bin/python" \
    start_bg "$lw/spark.log" "$venv/bin/spark-submit" --master 'local[*]' --conf spark.ui.enabled=false \
    --jars "$spark_jars" "$D/spark_latency.py" --bootstrap "$broker" --topic "$prefix-spark" \
    --arrivals "$lw/pyspark-arrivals.jsonl" --progress "$lw/pyspark-progress.json" \
    --checkpoint "$lw/spark-checkpoint" --ready "$lw/spark.ready" --stop "$lw/spark.stop"
  spark_pid=$bg_pid
  wait_for "the PySpark query to start" 180 "$spark_pid" test -e "$lw/spark.ready" ||
    { tail -n 30 "$lw/spark.log" >&2; die "the PySpark job did not start (log: $lw/spark.log)"; }
  sleep 2
  live_ingest pyspark "$prefix-spark" "$spark_pid"
  drain pyspark "$spark_pid" "$lw/pyspark-arrivals.jsonl" spark
  alive "$spark_pid" || { tail -n 30 "$lw/spark.log" >&2; die "the PySpark job died (log: $lw/spark.log)"; }
  touch "$lw/spark.stop"
  for ((i = 0; i < 600; i++)); do alive "$spark_pid" || break; sleep 0.1; done
  spark_rc=0
  if alive "$spark_pid"; then
    stop_bg "$spark_pid" TERM 20
  else
    wait "$spark_pid" || spark_rc=$?
  fi
  ((spark_rc == 0)) || { tail -n 30 "$lw/spark.log" >&2; die "the PySpark job failed with status $spark_rc (log: $lw/spark.log)"; }
  phase_json pyspark "$lw/pyspark-arrivals.jsonl" "$lw/pyspark-progress.json"
  phases+=("$lw/pyspark-phase.json")
fi

# --- report ----------------------------------------------------------------------
meta="$lw/meta.json"
MEM_KB="$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)" \
  CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" NPROC="$(nproc)" \
  KERNEL="$(uname -r)" JAVA_V="$(java -version 2>&1 | head -n1)" SPARK_V="$SPARK_VERSION" \
  LOAD_START="$load_start" LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)" QUICK="$quick" \
  DF_VERSION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  RATE="$lat_rate" SECONDS_="$lat_seconds" WARMUP="$lat_warmup" WORKERS="$lat_workers" RECORDS="$records" \
  GOAL_P99="$GOAL_P99_MS" GOAL_RATE="$GOAL_RATE" PREFIX="$prefix" \
  GOAL_PG_P99="$GOAL_PG_P99_MS" PG="${pg_url:+1}" PG_SCHEMA="$pg_schema" \
  CMD_INGEST="target/release/ingest -b $broker --topic TOPIC --generate $records --seed 1 --live --rate $lat_rate" \
  CMD_DF="$cmd_df${pg_url:+ (PGURL: the server of scripts/postgres)}" CMD_SPARK="$cmd_spark" \
  python3 - "$meta" <<'PY'
import json, os, sys, datetime
e = os.environ
meta = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "mode": "latency-quick" if e["QUICK"] == "1" else "latency",
    "git_commit": e["DF_VERSION"],
    "machine": {"nproc": int(e["NPROC"]), "memory_gb": round(int(e["MEM_KB"]) / 1024 / 1024, 1),
                "cpu_model": e["CPU_MODEL"], "kernel": e["KERNEL"], "java": e["JAVA_V"],
                "loadavg_at_start": e["LOAD_START"], "loadavg_at_end": e["LOAD_END"]},
    "settings": {"rate": int(e["RATE"]), "seconds": int(e["SECONDS_"]), "warmup": int(e["WARMUP"]),
                 "records_per_system": int(e["RECORDS"]), "partitions": 8, "epoch": "1s",
                 "dataflow_workers": int(e["WORKERS"]), "topics": e["PREFIX"] + "-*"},
    "goal": {"p99_ms": int(e["GOAL_P99"]), "records_per_sec": int(e["GOAL_RATE"]),
             "measure": "dataflow_kafka"} if e["GOAL_P99"] else {},
    "commands": {"ingest": e["CMD_INGEST"], "dataflow": e["CMD_DF"], "pyspark": e["CMD_SPARK"]},
    "definitions": {
        "latency": "emit time of an epoch minus its end (epoch start label + 1 s), per 1 s epoch; "
                   "InvoiceDate is the UTC second ingest --live stamped the invoice with",
        "measured_epochs": "the `seconds` epochs from the first one starting >= warmup s after "
                           "ingest started (each ending >= 0.5 s before it ended); one sample per epoch",
        "dataflow_kafka": "wall clock when a read_committed consumer (kcat, fetch.wait.max.ms=5) "
                          "receives the epoch's 'epochs' record from the aggregates topic: after the "
                          "job's transaction commits",
        "dataflow_jsonl": "wall clock when the epoch's line appears in epochs.jsonl (polled every 1 ms); "
                          "written and flushed before the transaction commits",
        "dataflow_created": "Kafka CreateTime of that record: when the job's producer created it "
                            "(before the commit)",
        "dataflow_postgres": "wall clock when the epoch's row is visible in the PostgreSQL history "
                             "table epochs (--sinks ...,postgres; one psql session polling every "
                             "10 ms, stamped when the poll that found it returned)",
        "dataflow_pg_after_kafka": "per epoch, dataflow_postgres minus dataflow_kafka arrival times "
                                   "(negative: visible in PostgreSQL first; the job commits "
                                   "PostgreSQL before the Kafka transaction)",
        "pyspark": "wall clock right after foreachBatch collected the micro-batch holding the "
                   "window's final row (append mode, 0 s watermark, default trigger), before any "
                   "sink I/O",
        "percentiles": "nearest rank",
    },
    "notes": [
        "ingest's producer lingers up to 10 ms (linger.ms=10), which is part of every figure",
        "the consumer, ingest, the broker and the watcher share the machine's CPUs",
        "pyspark " + e["SPARK_V"] + ", local[*], spark.sql.shuffle.partitions=8, session time zone UTC; "
        "it computes only per-window lines/units/revenue, the dataflow job all its aggregates",
    ],
}
if e["PG"] == "1":
    meta["settings"]["postgres_schema"] = e["PG_SCHEMA"]
    meta["goal_postgres"] = {"p99_ms": int(e["GOAL_PG_P99"]), "measure": "dataflow_pg_after_kafka"}
    meta["notes"].append("the dataflow job writes PostgreSQL (scripts/postgres, on this machine) "
                         "as well; the watcher's psql and the server share the CPUs too")
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
suffix=""
if ((quick)); then suffix=-quick; fi
out="$D/results/$(date -u +%Y-%m-%d)-latency$suffix.json"
# A run of one system (BENCH_LATENCY_SYSTEMS) keeps the other's figures already in $out.
python3 "$D/latency.py" report --out "$out" --meta "$meta" "${phases[@]}"
