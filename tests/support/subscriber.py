"""Run as a separate process: subscribe to the targets given and print each event as a
JSON line, until a job subscription sees its job finish or `--count` events arrived.

    python -m support.subscriber DSN PREFIX TARGET... [--count N]
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from kerrera import Kerrera


async def main(argv: list[str]) -> None:
    dsn, prefix, *rest = argv
    count = None
    if "--count" in rest:
        i = rest.index("--count")
        count = int(rest[i + 1])
        rest = rest[:i] + rest[i + 2 :]
    targets = [int(t) if t.isdigit() else t for t in rest]
    app = Kerrera(dsn, prefix=prefix, migrate=False)
    try:
        async with app.subscribe(*targets) as events:
            print(json.dumps({"kind": "ready"}), flush=True)
            seen = 0
            async for event in events:
                print(json.dumps(dataclasses.asdict(event)), flush=True)
                seen += 1
                if (count is not None and seen >= count) or (count is None and event.finished):
                    break
    finally:
        await app.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
