"""What live progress costs other work: a node process runs 100 jobs that each report
progress every ~10 ms, while this process inserts single jobs from 10 tasks for 10 s.

    python bench/progress_load.py off     # no reporting jobs: the baseline
    python bench/progress_load.py 0.25    # progress_interval 0.25 s (the default)
    python bench/progress_load.py 0       # every report written and published

The database is KERRERA_BENCH_DSN (a schema `progbench2_<mode>` is created in it; drop
it afterwards).
"""

import asyncio
import os
import subprocess
import sys
import time

from kerrera import Job, Kerrera, worker

DSN = os.environ.get("KERRERA_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/test")


# (named: a script's workers are refused at insert unless their name is importable or given)
@worker(queue="long", name="progress_load.reporter")
async def reporter(job: Job) -> None:
    i = 0
    while True:
        i += 1
        await job.progress(i % 100, "working")
        await asyncio.sleep(0.01)


@worker(queue="other", name="progress_load.other")
async def other(job: Job) -> None: ...


async def node(prefix: str, interval: float) -> None:
    app = Kerrera(
        DSN, prefix=prefix, queues={"long": 100}, progress_interval=interval, pool_size=20
    )
    async with app:
        await asyncio.sleep(25)


async def main(mode: str) -> None:
    prefix = f"progbench2_{mode.replace('.', '_')}"
    app = Kerrera(DSN, prefix=prefix, pool_size=12)
    await app.migrate()
    child = None
    if mode != "off":
        await app.insert_all([reporter.new({}) for _ in range(100)])
        child = subprocess.Popen([sys.executable, __file__, "node", prefix, mode], env=os.environ)
        await asyncio.sleep(4)
    n = [0]
    end = time.monotonic() + 10

    async def insert_loop():
        while time.monotonic() < end:
            await app.insert(other.new({}))
            n[0] += 1

    t = time.monotonic()
    await asyncio.gather(*(insert_loop() for _ in range(10)))
    took = time.monotonic() - t
    print(f"progress_interval={mode}: {n[0] / took:.0f} single inserts/s")
    if child:
        child.kill()
    await app.stop()


if sys.argv[1] == "node":
    asyncio.run(node(sys.argv[2], float(sys.argv[3])))
else:
    asyncio.run(main(sys.argv[1]))
