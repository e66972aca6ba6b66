"""What both PySpark jobs of scripts/bench read: the sales on the wire.

Imported by spark_job.py and spark_latency.py (spark-submit runs them from this
directory, so it is on the driver's import path).
"""

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

# The wire format (README, "The record on the wire"). unit_price is a decimal
# string on the wire; it is read as a string and cast to decimal(18,3).
SCHEMA = StructType(
    [
        StructField("invoice_no", StringType()),
        StructField("stock_code", StringType()),
        StructField("description", StringType()),
        StructField("quantity", LongType()),
        StructField("invoice_date", StringType()),
        StructField("unit_price", StringType()),
        StructField("customer_id", StringType()),
        StructField("country", StringType()),
    ]
)


def sales_stream(spark: SparkSession, bootstrap: str, topic: str) -> DataFrame:
    """The topic from its earliest offsets, one typed row per sale, with its net
    value in thousandths: quantity * unit_price (decimal(18,3)) * 1000, a long."""
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
        .load()
    )
    return (
        raw.select(F.from_json(F.col("value").cast("string"), SCHEMA).alias("r"))
        .select("r.*")
        .withColumn(
            "revenue_milli",
            (
                F.col("quantity").cast("decimal(20,0)")
                * F.col("unit_price").cast("decimal(18,3)")
                * F.lit(1000)
            ).cast("long"),
        )
    )
