#!/usr/bin/env python3
"""The helper of `scripts/bench --latency` (standard library only).

  latency.py watch --bootstrap B --topic AGGREGATES --jsonl DIR/epochs.jsonl --out ARRIVALS.jsonl
                    [--pg-table SCHEMA.epochs --pg-job JOB]   (PGURL in the environment)
      Watches the dataflow job's outputs and writes one JSON line per arrival
      of an epoch's `epochs` record, stamped with this process's wall clock
      (time.time(), the same clock ingest --live stamps InvoiceDate with):
        {"src": "kafka", "epoch": E, "seen": T, "created_ms": C}
            the record as a read_committed consumer (kcat) receives it, i.e.
            once the job's Kafka transaction holding it has committed; C is the
            record's Kafka timestamp (CreateTime: when the job's producer
            created it, before the commit);
        {"src": "file", "epoch": E, "seen": T, "lines": N}
            the line as it appears in the JSON-lines file (polled every 1 ms);
        {"src": "postgres", "epoch": E, "seen": T, "lines": N}
            with --pg-table: the epoch's row as it becomes visible in that
            history table of PostgreSQL (one psql session, polled every 10 ms;
            T is when the poll that found it returned).
      E is the epoch start in unix seconds. Runs until SIGTERM or SIGINT.

  latency.py arrived ARRIVALS.jsonl SRC EPOCH
      Exit 0 when ARRIVALS.jsonl holds an arrival of EPOCH (unix seconds) from
      SRC (kafka, file, postgres or spark; spark lines have no src), 1 otherwise.

  latency.py report --out RESULTS.json --meta META.json PHASE.json...
      PHASE.json: {"system", "arrivals", "ingest_summary", "ingest_started",
      "ingest_ended", "warmup", "seconds", "rate", "cpu" (machine busy %, cores used by
      the consumer and by ingest over the feed), "progress" (optional, Spark's
      micro-batches), "postgres" (optional, true: the dataflow job wrote PostgreSQL too)}.
      Latency of epoch E = first arrival of E - (E + 1 s), over the `seconds`
      epochs that start at least `warmup` seconds after ingest started (and
      end at least 0.5 s before it ended). Prints a table (p50, p99, max per measure, the
      achieved ingest rate; with PostgreSQL, its visibility after the epoch's end and
      after the Kafka commit) and writes RESULTS.json; a system RESULTS.json
      already holds and these phases do not measure is kept, marked
      "from_earlier_run". Exit 1 when a measured epoch never arrived.

Percentiles are nearest-rank: p99 of n values is the ceil(0.99 n)-th smallest
(with 120 epochs, the second largest).
"""

import argparse
import calendar
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse


def epoch_seconds(label: str) -> int:
    """'YYYY-MM-DDTHH:MM:SS' (UTC) -> unix seconds."""
    return calendar.timegm(datetime.datetime.strptime(label, "%Y-%m-%dT%H:%M:%S").timetuple())


# --- watch ---------------------------------------------------------------------


def watch(args) -> int:
    stop = threading.Event()
    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)

    def write(obj):
        with lock:
            out.write(json.dumps(obj) + "\n")

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    # -u: unbuffered output, so a line reaches us when kcat receives the record.
    # fetch.wait.max.ms bounds how long the broker holds a fetch open, so a commit
    # is seen within a few ms of the last stable offset moving.
    kcat = subprocess.Popen(
        [
            "kcat", "-C", "-u", "-q", "-b", args.bootstrap, "-t", args.topic, "-o", "beginning",
            "-X", "isolation.level=read_committed", "-X", "fetch.wait.max.ms=5",
            "-f", "%T\t%k\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def read_kafka():
        for line in kcat.stdout:
            seen = time.time()
            created, _, key = line.rstrip("\n").partition("\t")
            if key.startswith("epochs/"):
                write({"src": "kafka", "epoch": epoch_seconds(key[7:]), "seen": seen,
                       "created_ms": int(created)})

    def read_file():
        f = None
        rest = ""
        while not stop.is_set():
            if f is None:
                try:
                    f = open(args.jsonl)
                except FileNotFoundError:
                    time.sleep(0.01)
                    continue
            chunk = f.read()
            if not chunk:
                time.sleep(0.001)
                continue
            seen = time.time()
            rest += chunk
            *lines, rest = rest.split("\n")
            for line in lines:
                if line:
                    rec = json.loads(line)
                    value = rec.get("value") or {}
                    write({"src": "file", "epoch": epoch_seconds(rec["epoch"]), "seen": seen,
                           "lines": value.get("lines")})

    def read_postgres():
        # One psql session: a query every 10 ms costs no connection set-up. Each poll asks for
        # the epochs after the last one seen and ends with a marker line.
        # The URL comes from PGURL; its password goes to psql's environment, not its arguments.
        url = urllib.parse.urlsplit(os.environ["PGURL"])
        env = dict(os.environ)
        if url.password is not None:
            env["PGPASSWORD"] = urllib.parse.unquote(url.password)
            userinfo, _, host = url.netloc.rpartition("@")
            url = url._replace(netloc=userinfo.partition(":")[0] + "@" + host)
        psql = subprocess.Popen(
            ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", url.geturl()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            start_new_session=True, env=env,
        )

        def query(sql):
            psql.stdin.write(sql + ";\n\\echo __end__\n")
            psql.stdin.flush()
            rows = []
            for line in psql.stdout:
                line = line.rstrip("\n")
                if line == "__end__":
                    return rows
                if line:
                    rows.append(line.split("\t"))
            print("latency.py: psql ended", file=sys.stderr)
            return None

        # The job creates its tables at its start, perhaps after the watcher's.
        while not stop.is_set():
            rows = query(f"SELECT to_regclass('{args.pg_table}') IS NOT NULL")
            if rows is None:
                return
            if rows == [["t"]]:
                break
            stop.wait(0.01)
        job = args.pg_job.replace("'", "''")
        last = "-infinity"
        while not stop.is_set():
            rows = query(
                "SELECT to_char(epoch_start, 'YYYY-MM-DD\"T\"HH24:MI:SS'), lines "
                f"FROM {args.pg_table} WHERE job_id = '{job}' AND epoch_start > '{last}' "
                "ORDER BY epoch_start"
            )
            if rows is None:
                return
            seen = time.time()
            for label, lines in rows:
                write({"src": "postgres", "epoch": epoch_seconds(label), "seen": seen,
                       "lines": int(lines)})
                last = label
            stop.wait(0.01)
        psql.terminate()

    threads = [threading.Thread(target=read_kafka, daemon=True), threading.Thread(target=read_file, daemon=True)]
    if args.pg_table:
        threads.append(threading.Thread(target=read_postgres, daemon=True))
    for t in threads:
        t.start()
    while not stop.is_set():
        if kcat.poll() is not None:
            print(f"latency.py: kcat exited with status {kcat.returncode}", file=sys.stderr)
            break
        stop.wait(0.2)
    stop.set()
    if kcat.poll() is None:
        kcat.terminate()
        kcat.wait()
    threads[1].join(timeout=2)
    out.close()
    return 0


# --- report --------------------------------------------------------------------


def nearest_rank(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def stats(values):
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        "min_ms": round(v[0], 1),
        "p50_ms": round(nearest_rank(v, 0.50), 1),
        "p99_ms": round(nearest_rank(v, 0.99), 1),
        "max_ms": round(v[-1], 1),
        "mean_ms": round(sum(v) / len(v), 1),
    }


def measures_of(phase, arrivals):
    """(name, label, {epoch: latency ms}, {epoch: lines}) per measure of a phase."""
    first = {}
    created = {}
    lines = {}
    for a in arrivals:
        src, e = a["src"], a["epoch"]
        if e not in first.setdefault(src, {}):
            first[src][e] = a["seen"]
            if "created_ms" in a:
                created[e] = a["created_ms"] / 1000.0
        if a.get("lines") is not None:
            lines.setdefault(src, {})[e] = a["lines"]
    lat = lambda m: {e: (t - (e + 1)) * 1000.0 for e, t in m.items()}  # noqa: E731
    if phase["system"] == "dataflow":
        out = [
            ("dataflow_kafka", "dataflow: Kafka, read_committed", lat(first.get("kafka", {})), {}),
            ("dataflow_jsonl", "dataflow: JSON-lines file", lat(first.get("file", {})), lines.get("file", {})),
            ("dataflow_created", "dataflow: record CreateTime", lat(created), {}),
        ]
        if phase.get("postgres"):
            pg, kafka = first.get("postgres", {}), first.get("kafka", {})
            # Visible in PostgreSQL minus visible to read_committed Kafka, per epoch seen in both.
            after = {e: (t - kafka[e]) * 1000.0 for e, t in pg.items() if e in kafka}
            out += [
                ("dataflow_postgres", "dataflow: PostgreSQL epochs row", lat(pg), lines.get("postgres", {})),
                ("dataflow_pg_after_kafka", "dataflow: PostgreSQL - Kafka", after, {}),
            ]
        return out
    return [("pyspark", "pyspark: foreachBatch collect", lat(first.get("spark", {})), lines.get("spark", {}))]


def report(args) -> int:
    with open(args.meta) as f:
        result = json.load(f)
    result["systems"] = {}
    rows = []
    missing_any = False
    for path in args.phases:
        with open(path) as f:
            phase = json.load(f)
        arrivals = []
        if os.path.exists(phase["arrivals"]):
            with open(phase["arrivals"]) as f:
                arrivals = [json.loads(line) for line in f if line.strip()]
        if phase["system"] == "pyspark":
            for a in arrivals:
                a["src"] = "spark"
        summary = {}
        if os.path.exists(phase["ingest_summary"]):
            with open(phase["ingest_summary"]) as f:
                text = f.read().strip().splitlines()
            summary = json.loads(text[-1]) if text else {}
        first_epoch = math.ceil(phase["ingest_started"]) + phase["warmup"]
        last_epoch = math.floor(phase["ingest_ended"] - 0.5) - 1  # its end is >= 0.5 s before ingest ended
        if phase.get("seconds"):
            last_epoch = min(last_epoch, first_epoch + phase["seconds"] - 1)
        wanted = list(range(first_epoch, last_epoch + 1))
        entry = {
            "ingest": {
                "target_records_per_sec": phase["rate"],
                "published": summary.get("published"),
                "seconds": summary.get("seconds"),
                "records_per_sec": summary.get("records_per_sec"),
                "started_unix": phase["ingest_started"],
                "ended_unix": phase["ingest_ended"],
            },
            "measured_epochs": {"first": first_epoch, "last": last_epoch, "count": len(wanted)},
            "cpu_over_the_feed": phase.get("cpu"),
            "measures": {},
        }
        for name, label, lat, lines in measures_of(phase, arrivals):
            got = [lat[e] for e in wanted if e in lat]
            missing = [e for e in wanted if e not in lat]
            s = stats(got)
            s["missing"] = len(missing)
            if missing:
                s["missing_epochs"] = missing[:20]
            per_epoch_lines = [lines[e] for e in wanted if e in lines]
            if per_epoch_lines:
                pl = sorted(per_epoch_lines)
                s["lines_per_epoch"] = {"min": pl[0], "p50": nearest_rank(pl, 0.5), "max": pl[-1]}
            s["latency_ms_by_epoch"] = {str(e): round(lat[e], 1) for e in wanted if e in lat}
            entry["measures"][name] = s
            rows.append((label, s, summary.get("records_per_sec")))
            if missing and name != "dataflow_created":
                missing_any = True
        if phase.get("progress") and os.path.exists(phase["progress"]):
            with open(phase["progress"]) as f:
                progress = json.load(f)
            window = [p for p in progress if p["input_rows"] > 0]
            durations = sorted(p["duration_ms"].get("triggerExecution", 0) for p in progress)
            entry["micro_batches"] = {
                "count": len(progress),
                "with_data": len(window),
                "trigger_execution_ms": {
                    "p50": nearest_rank(durations, 0.5),
                    "p99": nearest_rank(durations, 0.99),
                    "max": durations[-1] if durations else None,
                },
                "rows_dropped_by_watermark": sum(p["dropped_by_watermark"] for p in progress),
            }
        result["systems"][phase["system"]] = entry

    if os.path.exists(args.out):
        # Keep the figures of a system this run did not measure (BENCH_LATENCY_SYSTEMS).
        with open(args.out) as f:
            old = json.load(f)
        for name, entry in old.get("systems", {}).items():
            if name not in result["systems"]:
                result["systems"][name] = dict(entry, from_earlier_run=entry.get("from_earlier_run", old.get("date")))
    goal = result.get("goal", {})
    print(
        f"\nlatency: emit time - epoch end (1 s epochs), ingest --live at "
        f"{result['settings']['rate']} records/s, {result['settings']['seconds']} s after a "
        f"{result['settings']['warmup']} s warm-up"
    )
    print(f"{'measure':34} {'epochs':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'missing':>7}  ingest records/s")
    for label, s, rate in rows:
        if s["n"]:
            print(
                f"{label:34} {s['n']:6d} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s['max_ms']:8.1f} "
                f"{s['missing']:7d}  {rate if rate is not None else '?'}"
            )
        else:
            print(f"{label:34} {0:6d} {'-':>8} {'-':>8} {'-':>8} {s['missing']:7d}  {rate}")
    for name, entry in result["systems"].items():
        cpu = entry.get("cpu_over_the_feed")
        if cpu and "from_earlier_run" not in entry:
            print(
                f"{name} phase CPU: machine {cpu['machine_busy_pct']}% busy, {name} "
                f"{cpu['consumer_cores']} cores, ingest {cpu['ingest_cores']} cores "
                f"(of {result['machine']['nproc']})"
            )
    spark = result["systems"].get("pyspark", {}).get("micro_batches")
    if spark:
        t = spark["trigger_execution_ms"]
        print(
            f"pyspark micro-batches: {spark['count']} ({spark['with_data']} with data), trigger execution "
            f"p50 {t['p50']} ms, p99 {t['p99']} ms, max {t['max']} ms; rows dropped behind the watermark: "
            f"{spark['rows_dropped_by_watermark']}"
        )
    df_measures = result["systems"].get("dataflow", {}).get("measures", {})
    df = df_measures.get("dataflow_kafka")
    if df and df.get("n") and goal:
        verdict = "met" if df["p99_ms"] <= goal["p99_ms"] and not df["missing"] else "NOT met"
        print(
            f"goal: dataflow p99 <= {goal['p99_ms']} ms at {goal['records_per_sec']} records/s "
            f"(Kafka, read_committed): {verdict} ({df['p99_ms']} ms)"
        )
        result["goal"]["met"] = verdict == "met"
    pg_goal = result.get("goal_postgres")
    pg = df_measures.get("dataflow_pg_after_kafka")
    if pg_goal and pg and pg.get("n") and "from_earlier_run" not in result["systems"]["dataflow"]:
        missing = df_measures.get("dataflow_postgres", {}).get("missing", 0)
        verdict = "met" if pg["p99_ms"] <= pg_goal["p99_ms"] and not missing else "NOT met"
        print(
            f"goal: PostgreSQL visible - Kafka read_committed visible, p99 <= {pg_goal['p99_ms']} ms "
            f"at {result['settings']['rate']} records/s: {verdict} ({pg['p99_ms']} ms; negative: "
            f"PostgreSQL first)"
        )
        pg_goal["met"] = verdict == "met"
    elif pg_goal:
        del result["goal_postgres"]
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"written: {args.out}")
    if missing_any:
        print("latency: some measured epochs were never emitted (see 'missing' above)", file=sys.stderr)
        return 1
    return 0


def arrived(args) -> int:
    try:
        with open(args.arrivals) as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                a = json.loads(line)
                if a.get("src", "spark") == args.src and a["epoch"] >= args.epoch:
                    return 0
    except FileNotFoundError:
        pass
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--bootstrap", required=True)
    w.add_argument("--topic", required=True)
    w.add_argument("--jsonl", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--pg-table", help="SCHEMA.epochs to poll (connection: PGURL)")
    w.add_argument("--pg-job", help="the job id whose rows to poll")
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("phases", nargs="+")
    a = sub.add_parser("arrived")
    a.add_argument("arrivals")
    a.add_argument("src", choices=["kafka", "file", "postgres", "spark"])
    a.add_argument("epoch", type=int)
    args = ap.parse_args()
    return {"watch": watch, "report": report, "arrived": arrived}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
