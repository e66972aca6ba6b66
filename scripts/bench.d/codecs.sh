# shellcheck shell=bash disable=SC2154  # sourced: the variables come from scripts/bench
# scripts/bench --codecs: sourced by scripts/bench after the broker is up and the release
# binaries are built. Not run alone.
#
# For each Kafka codec, ingest publishes the real data set into a fresh topic of 8
# partitions (`ingest --compression CODEC`); the table has ingest's records/s (median of
# the runs) and the bytes the broker stores for the topic (its log segments), and then the
# dataflow job's records/s reading that topic back (-w 2, --no-checkpoint), since the
# consumer pays for decompression. Topics are deleted afterwards.
#
# Uses from scripts/bench: ROOT D broker data runs work say die REAL_ROWS PARTITIONS.

data_dir="${KAFKA_DATA_DIR:-${KAFKA_CACHE_DIR:-$ROOT/.cache/kafka}/data}"
[[ -d $data_dir ]] || die "broker data directory not found: $data_dir (set KAFKA_DATA_DIR)"
results="$D/results/$(date -u +%F)-codecs.json"
mkdir -p "$work"
rows=()
for codec in none gzip snappy lz4 zstd; do
  rates=() reads=()
  for ((r = 1; r <= runs; r++)); do
    topic="bench-codec-$codec-$$-$r"
    say "ingest --compression $codec, run $r/$runs"
    line="$(target/release/ingest --file "$data" --topic "$topic" -b "$broker" \
      --partitions "$PARTITIONS" --compression "$codec" --rejects "$work/rejects.csv" 2>/dev/null)"
    rates+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["records_per_sec"])' "$line")")
    # Segments are written as received; the size of the .log files is what the broker keeps.
    bytes="$(find "$data_dir" -path "*/$topic-*" -name '*.log' -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
    report="$(target/release/dataflow -t "$topic" -b "$broker" --until-end -w 2 --no-checkpoint \
      --sinks jsonl -o "$work/codec-out" --progress-interval 0s 2>&1 >/dev/null | tail -n 1)"
    reads+=("$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["records_per_sec"]))' "$report")")
    scripts/kafka topics --delete --topic "$topic" >/dev/null 2>&1 || true
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
  rows+=("$codec $(median "${rates[@]}") $bytes $(median "${reads[@]}")")
done
python3 - "$results" "$REAL_ROWS" "${rows[@]}" <<'PY'
import json, sys
path, total, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
out = []
print(f"{'codec':<8} {'ingest rec/s':>13} {'bytes on broker':>16} {'bytes/record':>13} {'vs none':>8} {'dataflow -w 2 rec/s':>20}")
base = None
for row in rows:
    codec, rate, size, read = row.split()
    rate, size, read = float(rate), int(size), int(read)
    base = base or size
    out.append({"codec": codec, "ingest_records_per_sec": rate, "broker_bytes": size,
                "bytes_per_record": round(size / total, 1), "dataflow_records_per_sec": read})
    print(f"{codec:<8} {rate:>13,.0f} {size:>16,} {size / total:>13.1f} {size / base:>8.2f} {read:>20,}")
json.dump({"records": total, "rows": out}, open(path, "w"), indent=2)
print(f"written {path}")
PY
