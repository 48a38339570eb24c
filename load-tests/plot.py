#!/usr/bin/env python3
"""Plots of a marketlane-bench run: throughput and latency over time, one PNG each per live run.

usage: plot.py RESULTS_DIR   (reads live-<name>.csv and seen-<name>.csv, writes <name>-*.png)
"""
import csv
import glob
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def num(v):
    try:
        x = float(v)
        return x if math.isfinite(x) else None
    except (TypeError, ValueError):
        return None


def per_second_quantiles(rows, label, q):
    buckets = {}
    for r in rows:
        if r["table"] != label:
            continue
        buckets.setdefault(int(float(r["t"])), []).append((float(r["latency"]), int(r["count"])))
    out = []
    for sec in sorted(buckets):
        v = sorted(buckets[sec])
        total = sum(c for _, c in v)
        rank, acc = max(1, math.ceil(q * total)), 0
        for lat, c in v:
            acc += c
            if acc >= rank:
                out.append((sec, lat))
                break
    return out


def main(d):
    for live in sorted(glob.glob(os.path.join(d, "live-*.csv"))):
        name = os.path.basename(live)[len("live-"):-len(".csv")]
        s = read(live)
        t = [float(r["t"]) for r in s]
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=80)
        for col, lab in [("normalized", "normalized"), ("kafka", "Kafka acked"),
                         ("clickhouse", "ClickHouse acked (all categories)"),
                         ("engine", "Kafka engine (l2 only)"), ("calculator_rows", "calculators read")]:
            ys = [num(r[col]) for r in s]
            if any(ys):
                ax.plot(t, [y or 0 for y in ys], label=lab, linewidth=1)
        ax.set_xlabel("s since start")
        ax.set_ylabel("rows/s")
        ax.set_title(f"{name}: throughput per stage")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(os.path.join(d, f"{name}-throughput.png"))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=80)
        seen_path = os.path.join(d, f"seen-{name}.csv")
        if os.path.exists(seen_path):
            seen = read(seen_path)
            for label in sorted({r["table"] for r in seen}):
                pts = per_second_quantiles(seen, label, 0.99)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts],
                            label=f"p99 event→queryable, {label} (polled)", linewidth=1)
        for col, lab in [("p99_kafka", "p99 event→Kafka ack (daemon)"),
                         ("p99_redis", "p99 event→Redis write (daemon)")]:
            pts = [(float(r["t"]), num(r[col])) for r in s if num(r[col]) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=lab, linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("s since start")
        ax.set_ylabel("seconds (log)")
        ax.set_title(f"{name}: p99 latency per second")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(os.path.join(d, f"{name}-latency.png"))
        plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1])
