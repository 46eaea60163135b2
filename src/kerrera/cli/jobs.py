"""`kerrera jobs`: list, show, retry, cancel and delete jobs."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera jobs`."""
    parser = sub.add_parser("jobs", help="list, show, retry, cancel and delete jobs")
    common(parser)


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera jobs ...`."""
    raise NotImplementedError
