#!/usr/bin/env python3
"""How far the page's provisional figures of the open epoch trail a live feed.

    python3 scripts/bench.d/provisional_lag.py --job 127.0.0.1:8080 --ingest 127.0.0.1:9100 [--seconds 60]

against `ingest --generate N --live --rate R --http INGEST` publishing into a fresh topic and
`dataflow --epoch 1h --http JOB` reading it, both started within the current hour (the open
epoch then holds every line published). It follows the job's `/events` stream and polls
ingest's `retail_stream_ingest_records_published_total` every 20 ms. For each `provisional`
event, received at time T with L lines, the lag is T minus the moment ingest's count of
acknowledged records first reached L: how old the newest line counted is, at most (negative
when the job had counted the lines before ingest had its acknowledgement of them); and the
records acknowledged at T that are not counted yet, in seconds of the feed. Prints p50/p99/max
of both and the feed's rate as one JSON object. Standard library only.
"""

import argparse
import asyncio
import bisect
import json
import time


async def published(host, port):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    text = (await reader.read()).decode()
    writer.close()
    for line in text.splitlines():
        if line.startswith("retail_stream_ingest_records_published_total "):
            return float(line.split()[1])
    return None


async def poll_ingest(host, port, series, stop):
    while not stop.is_set():
        n = await published(host, port)
        if n is not None:
            series.append((time.monotonic(), n))
        await asyncio.sleep(0.02)


async def follow(host, port, readings, stop):
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
    writer.write(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    event = None
    while not stop.is_set():
        line = (await reader.readline()).decode()
        if not line:
            return
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == "provisional":
            p = json.loads(line[6:])
            if p:
                readings.append((time.monotonic(), p["epoch"], p["lines"]))


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", required=True)
    ap.add_argument("--ingest", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    jh, jp = args.job.rsplit(":", 1)
    ih, ip = args.ingest.rsplit(":", 1)
    series, readings, stop = [], [], asyncio.Event()
    tasks = [
        asyncio.create_task(poll_ingest(ih, int(ip), series, stop)),
        asyncio.create_task(follow(jh, int(jp), readings, stop)),
    ]
    await asyncio.sleep(args.seconds)
    stop.set()
    for t in tasks:
        t.cancel()
    epochs = {e for _, e, _ in readings}
    if len(epochs) != 1:
        raise SystemExit(f"the open epoch changed during the run ({sorted(epochs)}): run it again within one hour")
    times = [t for t, _ in series]
    counts = [n for _, n in series]
    rate = (counts[-1] - counts[0]) / (times[-1] - times[0])
    lags, behind = [], []
    for t, _, lines in readings:
        # The first poll at which ingest had published at least `lines` records.
        i = bisect.bisect_left(counts, lines)
        if i < len(counts):
            lags.append(t - times[i])
        # The last poll before the reading: records acknowledged then, not counted.
        j = bisect.bisect_right(times, t) - 1
        if j >= 0:
            behind.append((counts[j] - lines) / rate)
    lags.sort()
    behind.sort()

    def spread(xs):
        return {
            "p50": round(xs[len(xs) // 2], 3),
            "p99": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3),
            "max": round(xs[-1], 3),
        }

    print(json.dumps({
        "readings": len(lags),
        "feed_records_per_s": round(rate),
        "lag_s": spread(lags),
        "acknowledged_not_counted_s": spread(behind),
        "epoch": epochs.pop(),
    }))


asyncio.run(main())
