#!/usr/bin/env python3
"""scripts/bench's helper (standard library only).

  report.py compare SPARK.json SUMMARY.json
      exit 0 when the PySpark result equals the dataflow job's summary.json on
      totals (lines, units, revenue_milli, invoices, cancellation_lines),
      by_country and top_products; otherwise print MISMATCH with the
      differences and exit 1.

  report.py write RUNS.jsonl META.json OUT.json
      RUNS.jsonl: one line per run {"name", "run", "records", "wall", "user",
      "sys", "max_rss_kb", "check"}; META.json: machine, commands, data set.
      Prints a table of the medians over the runs of each measurement and
      writes OUT.json with every run, the medians and the ratios of each to
      (a) kcat and to (d) PySpark.
"""

import json
import statistics
import sys

TOTAL_KEYS = ("lines", "units", "revenue_milli", "invoices", "cancellation_lines")


def compare(spark_path: str, summary_path: str) -> int:
    with open(spark_path) as f:
        spark = json.load(f)
    with open(summary_path) as f:
        ours = json.load(f)
    diffs = []
    for k in TOTAL_KEYS:
        a, b = spark["totals"].get(k), ours["totals"].get(k)
        if a != b:
            diffs.append(f"totals.{k}: pyspark {a} != dataflow {b}")
    sc, oc = spark["by_country"], ours["by_country"]
    for c in sorted(set(sc) | set(oc)):
        a = sc.get(c)
        b = oc.get(c)
        b = {k: b[k] for k in ("lines", "units", "revenue_milli")} if b else None
        if a != b:
            diffs.append(f"by_country[{c!r}]: pyspark {a} != dataflow {b}")
    st = [(p["stock_code"], p["revenue_milli"]) for p in spark["top_products"]]
    ot = [(p["stock_code"], p["revenue_milli"]) for p in ours["top_products"]]
    if st != ot:
        diffs.append(f"top_products: pyspark {st} != dataflow {ot}")
    if diffs:
        print(f"MISMATCH: PySpark result differs from dataflow summary.json ({len(diffs)} differences):")
        for d in diffs[:20]:
            print("  " + d)
        return 1
    print(
        f"check: PySpark result == dataflow summary.json (totals, {len(oc)} countries, top {len(ot)} products)"
    )
    return 0


def write(runs_path: str, meta_path: str, out_path: str) -> int:
    with open(meta_path) as f:
        meta = json.load(f)
    runs = [json.loads(line) for line in open(runs_path) if line.strip()]
    names = []
    for r in runs:
        if r["name"] not in names:
            names.append(r["name"])
    figures = {}
    for n in names:
        rs = [r for r in runs if r["name"] == n]
        med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
        records = rs[0]["records"]
        wall = med("wall")
        cpu = statistics.median(r["user"] + r["sys"] for r in rs)
        figures[n] = {
            "runs": len(rs),
            "records": records,
            "wall_s": round(wall, 3),
            "wall_s_min": round(min(r["wall"] for r in rs), 3),
            "records_per_s": round(records / wall) if wall else None,
            "cpu_s": round(cpu, 3),
            "cpu_s_per_million": round(cpu / (records / 1e6), 3),
            "peak_rss_mb": round(statistics.median(r["max_rss_kb"] for r in rs) / 1024, 1),
            "checks": sorted({r.get("check", "") for r in rs} - {""}),
        }

    def ratios(base):
        if base not in figures:
            return {}
        b = figures[base]
        out = {}
        for n, f in figures.items():
            out[n] = {
                "records_per_s": round(f["records_per_s"] / b["records_per_s"], 3),
                "cpu_s_per_million": round(f["cpu_s_per_million"] / b["cpu_s_per_million"], 3),
                "peak_rss": round(f["peak_rss_mb"] / b["peak_rss_mb"], 4),
            }
        return out

    first = names[0]  # (a) kcat
    spark = next((n for n in names if n.startswith("d")), None)
    result = dict(meta)
    result["figures"] = figures
    result["ratio_to_" + first] = ratios(first)
    if spark:
        result["ratio_to_" + spark] = ratios(spark)
    result["runs"] = runs

    # The performance targets: (c) --no-checkpoint -w 2, (f) exactly-once -w 2.
    w2 = next((n for n in names if n.startswith("c")), None)
    eo2 = next((n for n in names if n.startswith("f")), None)
    kcat = figures[first]["records_per_s"]
    goals = {}
    if w2:
        g = figures[w2]
        goals["no-checkpoint w2 >= 60% of kcat records/s"] = g["records_per_s"] >= 0.6 * kcat
    pg = next((n for n in names if n.startswith("i")), None)
    if pg and eo2:
        goals["postgres w2 within 10% of exactly-once w2"] = (
            figures[pg]["records_per_s"] >= 0.9 * figures[eo2]["records_per_s"])
    if eo2:
        g = figures[eo2]
        goals["exactly-once w2 >= 50% of kcat records/s"] = g["records_per_s"] >= 0.5 * kcat
        if w2:
            goals["exactly-once w2 within 15% of no-checkpoint"] = (
                g["records_per_s"] >= 0.85 * figures[w2]["records_per_s"])
        if spark:
            s = figures[spark]
            goals["exactly-once w2 >= 8x pyspark records/s"] = g["records_per_s"] >= 8 * s["records_per_s"]
    for n in names:
        if n[0] in "bcef":
            goals[f"{n} <= 1.5 CPU s per million"] = figures[n]["cpu_s_per_million"] <= 1.5
    if goals:
        result["goals"] = goals

    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    hdr = f"{'':28} {'wall s':>8} {'records/s':>11} {'CPU s/M rec':>11} {'peak RSS MB':>11} {'x (a) rec/s':>11}"
    if spark:
        hdr += f" {'x (d) rec/s':>11} {'RSS/(d)':>8}"
    print(hdr)
    ra = result["ratio_to_" + first]
    rd = result.get("ratio_to_" + spark, {}) if spark else {}
    for n in names:
        f = figures[n]
        line = (
            f"{n:28} {f['wall_s']:8.2f} {f['records_per_s']:11,d} {f['cpu_s_per_million']:11.2f}"
            f" {f['peak_rss_mb']:11.1f} {ra[n]['records_per_s']:11.3f}"
        )
        if spark:
            line += f" {rd[n]['records_per_s']:11.2f} {rd[n]['peak_rss']:8.3f}"
        print(line)
    print(f"(medians of {figures[first]['runs']} run(s); {figures[first]['records']:,} records)")
    if "parse" in meta:
        p = meta["parse"]
        print(f"{'parse alone (wire_bench)':28} {'':8} {'':11} {p['cpu_s_per_million']:11.2f}"
              f"   ({p['saleref_from_json_best_ns']:.0f} ns a record, best of 5)")
    for k, v in result.get("goals", {}).items():
        print(f"goal {k}: {'yes' if v else 'NO'}")
    print(f"results: {out_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 5 and sys.argv[1] == "write":
        sys.exit(write(*sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
