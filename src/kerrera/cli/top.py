"""`kerrera top`: a live view of queues and throughput."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera top`."""
    parser = sub.add_parser("top", help="a live view of queues and throughput")
    common(parser)


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera top ...`."""
    raise NotImplementedError
