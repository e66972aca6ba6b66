"""The PySpark side of `scripts/bench --latency`: when does Spark Structured
Streaming, at its fastest trigger, hand over the final result of a 1 s
event-time window?

Run through spark-submit (scripts/bench does it, with the Kafka connector
jars from Maven in --jars):

    spark-submit --master local[*] --jars ... spark_latency.py \
        --bootstrap 127.0.0.1:9092 --topic T --arrivals A.jsonl \
        --progress P.json --checkpoint DIR --ready R --stop S

The stream reads the topic from the earliest offsets with the default trigger
(the next micro-batch starts as soon as the previous one ends: Spark's fastest
micro-batch mode), parses each value with from_json, takes InvoiceDate as the
event time (UTC, whole seconds, like the dataflow job's epochs), and
aggregates per 1 s tumbling window (lines, units, revenue in thousandths) with
a 0 s watermark in append mode. Append mode emits a window once, when the
watermark (the largest event time seen, 0 s delay) has passed its end: the
equivalent of the dataflow job emitting an epoch once it is closed. A record
that arrives behind the watermark is dropped by Spark (counted in the progress
file as numRowsDroppedByWatermark); the dataflow job would keep it as late.

Emit time of a window = the wall clock (time.time()) right after foreachBatch
has collected the batch's rows to the driver, i.e. when the final result is
in the sink's hands, before any sink I/O. One line per window goes to
--arrivals: {"epoch": <window start, unix seconds>, "seen": <unix seconds>,
"batch": <batch id>, "lines": N}.

The job writes --ready once the first (empty) micro-batch is done, runs until the file --stop
exists (or SIGTERM), then writes every micro-batch's progress (batch id,
input rows, durations, rows dropped by the watermark) to --progress.
"""

import argparse
import json
import os
import signal
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_wire import sales_stream


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--arrivals", required=True, help="JSON lines: one per emitted window")
    ap.add_argument("--progress", required=True, help="JSON: every micro-batch's progress")
    ap.add_argument("--checkpoint", required=True, help="a fresh directory for the stream's checkpoint")
    ap.add_argument("--ready", required=True, help="file created once the query runs")
    ap.add_argument("--stop", required=True, help="the job stops when this file exists")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    args = ap.parse_args()

    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))

    spark = (
        SparkSession.builder.appName("retail-stream-bench-latency")
        .config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.streaming.checkpointLocation", args.checkpoint)
        # Keep every batch's progress, not only the last 100.
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")

    sales = sales_stream(spark, args.bootstrap, args.topic).withColumn(
        "ts", F.to_timestamp("invoice_date", "yyyy-MM-dd'T'HH:mm:ss")
    )
    windows = (
        sales.withWatermark("ts", "0 seconds")
        .groupBy(F.window("ts", "1 second"))
        .agg(
            F.count(F.lit(1)).alias("lines"),
            F.sum("quantity").alias("units"),
            F.sum("revenue_milli").alias("revenue_milli"),
        )
        .select(F.unix_timestamp(F.col("window.start")).alias("epoch"), "lines", "units", "revenue_milli")
    )

    out = open(args.arrivals, "a", buffering=1)

    def emit(batch, batch_id):
        rows = batch.collect()
        seen = time.time()
        for r in sorted(rows, key=lambda r: r["epoch"]):
            out.write(
                json.dumps({"epoch": int(r["epoch"]), "seen": seen, "batch": batch_id, "lines": int(r["lines"])})
                + "\n"
            )

    query = windows.writeStream.outputMode("append").foreachBatch(emit).start()
    # Ready once the first (empty) micro-batch is done: query planning, code
    # generation and the state store's start-up are behind us.
    while query.isActive and query.lastProgress is None and not stopping[0]:
        time.sleep(0.1)
    open(args.ready, "w").close()
    while not stopping[0] and not os.path.exists(args.stop):
        if not query.isActive:
            break
        time.sleep(0.2)
    failed = query.exception()
    progress = [
        {
            "batch": p["batchId"],
            "timestamp": p["timestamp"],
            "input_rows": p["numInputRows"],
            "duration_ms": p["durationMs"],
            "dropped_by_watermark": sum(
                s.get("numRowsDroppedByWatermark", 0) for s in p.get("stateOperators", [])
            ),
        }
        for p in query.recentProgress
    ]
    query.stop()
    out.close()
    with open(args.progress, "w") as f:
        json.dump(progress, f)
    spark.stop()
    if failed is not None:
        print(f"spark_latency: the query failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
