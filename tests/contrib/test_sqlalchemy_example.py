"""The SQLAlchemy example runs as documented: one order's receipt is sent, the refused
order's job went with its rollback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_app" / "shop.py"


def test_the_shop_example_runs(dsn: str, prefix: str, sql: Any) -> None:
    env = {**os.environ, "KERRERA_DATABASE_URL": dsn, "KERRERA_PREFIX": prefix}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("receipt for order") == 1 and "ada@example.com" in out
    assert "order for bob@example.com refused" in out and "completed" in out
    assert sql("SELECT count(*) FROM oban_jobs") == [(1,)]
    assert sql("SELECT email FROM example_orders") == [("ada@example.com",)]
