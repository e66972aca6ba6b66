#!/usr/bin/env python3
"""Many viewers of a live job's page: what 1,000 open event streams cost the job.

    python3 scripts/bench.d/viewers.py --addr 127.0.0.1:8080 --pid PID [--streams 1000]

against a running `dataflow ... --http ADDR` (process PID) that commits epochs while it runs
(a live feed, e.g. `ingest --generate 10000000 --live --rate 2000` and `dataflow --epoch 1s`).
It reads the job's threads (/proc/PID/task) and resident memory (VmRSS) and times
--requests sequential GETs of /api/state, first with no viewer, then with --streams event
streams open, every one of them read as a browser would (each event received in full), and
prints one JSON object. Standard library only. The client runs on the same machine, so its
CPU competes with the job's: the figures are an upper bound of what the server costs.
"""

import argparse
import asyncio
import json
import statistics
import time


def threads(pid):
    import os

    return len(os.listdir(f"/proc/{pid}/task"))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


async def get(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])


async def latencies(host, port, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        status = await get(host, port, "/api/state")
        out.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise SystemExit(f"/api/state answered {status}")
        await asyncio.sleep(0.01)
    out.sort()
    return {
        "p50_ms": round(statistics.median(out), 2),
        "p99_ms": round(out[min(len(out) - 1, int(len(out) * 0.99))], 2),
        "max_ms": round(out[-1], 2),
        "n": n,
    }


async def viewer(host, port, opened, received):
    """One event stream, read to its end; counts the events it receives."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
    writer.write(f"GET /events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"/events answered {head[:40]!r}")
    opened.set_result(None)
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.startswith(b"event:"):
            received[0] += 1


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", required=True, type=int)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)

    before = {"threads": threads(args.pid), "rss_mb": rss_mb(args.pid)}
    before["api_state"] = await latencies(host, port, args.requests)
    received = [0]
    tasks, opened = [], []
    t = time.perf_counter()
    for _ in range(args.streams):
        f = asyncio.get_running_loop().create_future()
        opened.append(f)
        tasks.append(asyncio.create_task(viewer(host, port, f, received)))
    await asyncio.gather(*opened)
    open_s = round(time.perf_counter() - t, 2)
    events_before = received[0]
    t = time.perf_counter()
    during = await latencies(host, port, args.requests)
    seconds = time.perf_counter() - t
    after = {"threads": threads(args.pid), "rss_mb": rss_mb(args.pid), "api_state": during}
    after["events_per_viewer_per_s"] = round((received[0] - events_before) / args.streams / seconds, 2)
    print(json.dumps({"streams": args.streams, "opened_in_s": open_s, "before": before, "with_streams": after}))
    for task in tasks:
        task.cancel()


asyncio.run(main())
