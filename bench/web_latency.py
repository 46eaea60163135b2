"""Latency of every dashboard page's queries, and their plans, on a seeded database.

    python bench/seed_jobs.py --dsn postgresql://postgres@localhost/kerrera_web10m
    python bench/web_latency.py --dsn postgresql://postgres@localhost/kerrera_web10m

A "page" is the set of `Dashboard` calls that the web page makes for one view (the
jobs page is its state counts plus one list, and so on). Each is run `--warmup` times,
then `--runs` times, one after the other, and its p50 / p95 / max are printed as a
Markdown table (the figures of bench/README.md). Then every query is run once more
with its plan recorded (`Dashboard(explain=True)`, the server's own settings): the
script fails if any plan reads `oban_jobs` with a sequential scan, or if a page's p95
is above `--budget` milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from kerrera.core.search import parse_search
from kerrera.engine.dashboard import STATES, Dashboard

Page = Callable[[Dashboard], Awaitable[Any]]

#: Searches of the jobs page, one per filter and a few combined (values exist in the
#: seeded data: see seed_jobs.py).
SEARCHES = (
    "queues:media",
    "queues:analytics,low",
    "workers:mailers.Worker2",
    "tags:vip",
    "tags:bulk",
    "nodes:node-3",
    "priorities:3",
    "ids:12,5000000,9999999",
    "args.user.id:4242",
    "args.account_id:17",
    "args.kind:c",
    "meta.batch_id:b1234",
    "queues:media tags:vip",
    "queues:mailers args.user.id:4242",
    "workers:default.Worker1 priorities:0,1 args.kind:a",
)


def pages(last_id: int) -> dict[str, Page]:
    """The pages measured, by name."""
    out: dict[str, Page] = {}

    async def jobs(d: Dashboard, state: str = "completed", search: str = "") -> None:
        parsed = parse_search(search)
        await d.state_counts(parsed)
        await d.list_jobs(state, parsed)

    async def deep(d: Dashboard) -> None:
        await d.state_counts()
        await d.list_jobs("completed", older_than=last_id // 2)

    async def back(d: Dashboard) -> None:
        await d.list_jobs("completed", newer_than=last_id // 2)

    async def detail(d: Dashboard) -> None:
        job = await d.job(last_id // 3)
        if job is not None:
            await d.worker_jobs(job.worker, exclude=job.id)

    async def dry_run(d: Dashboard) -> None:
        search = parse_search("queues:media tags:vip")
        upto = await d.last_id()
        await d.count_matching("retryable", search, upto_id=upto, cap=10_000)
        await d.match_ids("retryable", search, after_id=0, upto_id=upto, limit=5)

    async def suggest(d: Dashboard) -> None:
        for field in ("queues", "workers", "args"):
            await d.suggest(field)

    for state in STATES:
        out[f"jobs: {state}"] = lambda d, s=state: jobs(d, s)
    out["jobs: completed, page at the middle"] = deep
    out["jobs: completed, previous page"] = back
    for text in SEARCHES:
        out[f"search: {text}"] = lambda d, t=text: jobs(d, "completed", t)
    out["search: tags:vip (retryable list)"] = lambda d: jobs(d, "retryable", "tags:vip")
    out["job detail"] = detail
    out["bulk dry run"] = dry_run
    out["queues"] = lambda d: d.queue_counts()
    out["errors"] = lambda d: d.error_groups()
    out["suggestions"] = suggest
    out["chart: 1 hour"] = lambda d: d.chart(window=timedelta(hours=1), by="queue")
    out["chart: 24 hours"] = lambda d: d.chart(window=timedelta(hours=24), by="queue")
    return out


async def measure(dash: Dashboard, page: Page, runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of `runs` runs (after `warmup` unmeasured ones)."""
    for _ in range(warmup):
        await page(dash)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await page(dash)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20, method="inclusive")[18] if len(times) > 1 else times[0]


async def main(opts: argparse.Namespace) -> int:
    dash = await Dashboard.connect(opts.dsn, opts.prefix)
    failures: list[str] = []
    try:
        last = await dash.last_id()
        print(f"{last:,} jobs (highest id); {opts.runs} runs per page after {opts.warmup}\n")
        print("| page | p50 ms | p95 ms | max ms |")
        print("|---|---:|---:|---:|")
        for name, page in pages(last).items():
            if opts.only and not re.search(opts.only, name):
                continue
            times = await measure(dash, page, opts.runs, opts.warmup)
            q95 = p95(times)
            print(f"| {name} | {statistics.median(times):.1f} | {q95:.1f} | {max(times):.1f} |",
                  flush=True)  # fmt: skip
            if q95 > opts.budget:
                failures.append(f"{name}: p95 {q95:.1f} ms > {opts.budget} ms")
        explained = await Dashboard.connect(opts.dsn, opts.prefix, explain=True)
        try:
            for name, page in pages(last).items():
                if opts.only and not re.search(opts.only, name):
                    continue
                explained.plans.clear()
                await page(explained)
                for sql, plan in explained.plans:
                    if re.search(r"Seq Scan on oban_jobs\b", plan):
                        failures.append(f"{name}: sequential scan of oban_jobs\n{sql}\n{plan}")
                    if opts.plans and "oban_jobs" in sql:
                        print(f"\n-- {name}\n{plan}")
        finally:
            await explained.close()
    finally:
        await dash.close()
    print()
    if failures:
        print("FAILED:\n" + "\n".join(failures))
        return 1
    print(f"every page's p95 is within {opts.budget} ms; no plan scans oban_jobs sequentially")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--prefix", default="public")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=float, default=200.0, help="p95 limit, ms")
    parser.add_argument("--only", help="regex: measure only the pages it matches")
    parser.add_argument("--plans", action="store_true", help="print every plan")
    sys.exit(asyncio.run(main(parser.parse_args())))
