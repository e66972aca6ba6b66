"""The PySpark baseline of scripts/bench: the same totals, by-country and
top-10 products as the dataflow job's summary.json, computed with Spark
Structured Streaming over the same Kafka topic.

Run through spark-submit (scripts/bench does it, with the Kafka connector
jars from Maven in --jars):

    spark-submit --master local[*] --jars ... spark_job.py \
        --bootstrap 127.0.0.1:9092 --topic bench-retail --output result.json

The stream reads the topic from the earliest offsets with Trigger.AvailableNow
(everything there is at start, then stop), parses each value with from_json
and the wire format's schema, and in foreachBatch computes per-batch partial
aggregates that the driver merges exactly (Python ints): Spark's streaming
aggregations cannot count distinct values, and this way any number of batches
gives the same result. Money is integer thousandths:
quantity * unit_price (decimal(18,3)) * 1000, cast to a long per line.
"""

import argparse
import json
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_wire import sales_stream


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--checkpoint", required=True, help="a fresh directory for the stream's checkpoint")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    args = ap.parse_args()

    spark = (
        SparkSession.builder.appName("retail-stream-bench")
        .config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.streaming.checkpointLocation", args.checkpoint)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")

    sales = sales_stream(spark, args.bootstrap, args.topic).withColumn(
        "is_cancel", F.col("invoice_no").startswith("C")
    )

    totals = {"lines": 0, "units": 0, "revenue_milli": 0, "cancellation_lines": 0}
    by_country: dict = {}
    by_product: dict = {}
    invoices: set = set()
    batches = [0]

    def merge(batch, batch_id):
        batches[0] += 1
        batch = batch.persist()
        t = batch.agg(
            F.count(F.lit(1)).alias("lines"),
            F.sum("quantity").alias("units"),
            F.sum("revenue_milli").alias("revenue_milli"),
            F.sum(F.col("is_cancel").cast("long")).alias("cancellation_lines"),
        ).collect()[0]
        for k in totals:
            totals[k] += int(t[k] or 0)
        for r in (
            batch.groupBy("country")
            .agg(
                F.count(F.lit(1)).alias("lines"),
                F.sum("quantity").alias("units"),
                F.sum("revenue_milli").alias("revenue_milli"),
            )
            .collect()
        ):
            c = by_country.setdefault(r["country"], {"lines": 0, "units": 0, "revenue_milli": 0})
            c["lines"] += int(r["lines"])
            c["units"] += int(r["units"])
            c["revenue_milli"] += int(r["revenue_milli"])
        for r in batch.groupBy("stock_code").agg(F.sum("revenue_milli").alias("rev")).collect():
            by_product[r["stock_code"]] = by_product.get(r["stock_code"], 0) + int(r["rev"])
        invoices.update(r[0] for r in batch.select("invoice_no").distinct().collect())
        batch.unpersist()

    started = time.time()
    query = sales.writeStream.foreachBatch(merge).trigger(availableNow=True).start()
    query.awaitTermination()
    seconds = time.time() - started

    top = sorted(by_product.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    result = {
        "totals": dict(totals, invoices=len(invoices)),
        "by_country": {k: by_country[k] for k in sorted(by_country)},
        "top_products": [{"stock_code": s, "revenue_milli": v} for s, v in top],
        "batches": batches[0],
        "stream_seconds": round(seconds, 3),
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    spark.stop()
    print(json.dumps({"lines": totals["lines"], "batches": batches[0], "stream_seconds": round(seconds, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
