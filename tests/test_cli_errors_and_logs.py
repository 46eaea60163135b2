"""A new user's mistakes, through the real `kerrera` command: one `kerrera: error:` line
and exit code 2, never a traceback; and what `kerrera start` says about each job."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from acceptance.nodes import KERRERA, Node, _env, until
from support.scripted import Scripted

from kerrera import Kerrera
from kerrera.core.errors import ConfigError
from kerrera.engine.embedded import check_dsn


def kerrera(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    done = subprocess.run(
        [str(KERRERA), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**_env(), **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode, done.stderr


def one_error(code: int, stderr: str) -> str:
    """The single `kerrera: error:` line of a failed command (exit 2, no traceback)."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kerrera: error: "), stderr
    return lines[0]


# -- --module ---------------------------------------------------------------------------
AT = r"\(at .*first_hour_mod\.py:{}\)"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, r"option '--module': no module 'first_hour_mod' in the current directory"),
        ("def broken(:\n", "importing 'first_hour_mod' failed: SyntaxError: .* " + AT.format(1)),
        ("import no_such_dep_xyz\n", "No module named 'no_such_dep_xyz' " + AT.format(1)),
        ("x = 1\nraise RuntimeError('SETTINGS missing')\n", "SETTINGS missing " + AT.format(2)),
    ],
    ids=["missing", "syntax-error", "missing-dependency", "raises"],
)  # fmt: skip
def test_a_module_that_does_not_import(
    tmp_path: Path, dsn: str, prefix: str, source: str | None, expected: str
) -> None:
    if source is not None:
        (tmp_path / "first_hour_mod.py").write_text(source)
    code, stderr = kerrera(
        "start", "--dsn", dsn, "--prefix", prefix, "--module", "first_hour_mod", cwd=tmp_path
    )
    assert re.search(expected, one_error(code, stderr)), stderr


# -- DSN typos --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgress://postgres@127.0.0.1/test", "did you mean 'postgres://'?"),
        ("postgresql:/test", "a '//' is missing after 'postgresql:'"),
        ("mysql://root@127.0.0.1/app", "Kerrera needs PostgreSQL, not mysql"),
        ("postgresql+psycopg://postgres@127.0.0.1/db", "write 'postgresql://', without the"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", [["jobs", "list"], ["migrate"], ["start"]])
def test_a_dsn_scheme_typo_names_the_option_and_the_schemes(
    dsn: str, expected: str, command: list[str]
) -> None:
    line = one_error(*kerrera(*command, "--dsn", dsn))
    assert "option '--dsn'" in line and expected in line, line
    assert "postgresql://user:password@host:port/database" in line
    assert "127.0.0.1" not in line  # the DSN itself (it may hold a password) is not repeated


def test_a_dsn_typo_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    code, stderr = kerrera(
        "jobs", "list", env={"KERRERA_DATABASE_URL": "postgress://x@localhost/db"}, cwd=tmp_path
    )
    line = one_error(code, stderr)
    assert "$KERRERA_DATABASE_URL" in line and "did you mean 'postgres://'?" in line
    assert not (tmp_path / ".kerrera").exists()  # no embedded database started instead


# -- what `kerrera start` says about jobs -----------------------------------------------------
def test_start_logs_each_job_outcome_in_utc(
    start_node: Callable[..., Node], client: Kerrera
) -> None:
    node = start_node(extra=("--log-events",))
    failing = client.sync.insert(Scripted.new({"do": "fail_until", "times": 2}))
    discarded = client.sync.insert(
        Scripted.new({"do": "error", "message": "kaput"}, max_attempts=1)
    )
    node.wait_for(f"job {failing.id} {Scripted.name} completed in ")
    node.wait_for(f"job {discarded.id} {Scripted.name} failed after ")
    lines = node.stderr.splitlines()

    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z"
    [retry] = [line for line in lines if f"job {failing.id} " in line and "will retry" in line]
    assert re.match(rf"{stamp} WARNING kerrera\.jobs: ", retry), retry
    assert retry.endswith("ValueError: failing attempt 1")
    [done] = [line for line in lines if f"job {failing.id} " in line and "completed" in line]
    assert re.match(rf"{stamp} INFO kerrera\.jobs: .*\(queue default, attempt 2/3\)$", done)
    at = lines.index(next(line for line in lines if f"job {discarded.id} " in line))
    assert re.match(rf"{stamp} ERROR kerrera\.jobs: .*RuntimeError: kaput$", lines[at])
    assert lines[at + 1] == "Traceback (most recent call last):"

    # --log-events: JSON lines too, but no line for a stager run that staged nothing.
    events = [json.loads(line) for line in lines if line.startswith("{")]
    stager = [e for e in events if e["event"] == "stager"]
    assert stager and all(e["count"] > 0 for e in stager), stager
    assert {e["event"] for e in events} >= {"job.exception", "job.stop"}


def test_log_level_warning_keeps_only_the_failures(
    start_node: Callable[..., Node], client: Kerrera
) -> None:
    node = start_node(extra=("--log-level", "warning"))
    ok = client.sync.insert(Scripted.new({"do": "ok"}))
    bad = client.sync.insert(Scripted.new({"do": "error"}, max_attempts=1))
    node.wait_for(f"job {bad.id} ")
    until(lambda: client.sync.get_job(ok.id).state == "completed")  # type: ignore[union-attr]
    assert f"job {ok.id} " not in node.stderr
    assert " INFO " not in node.stderr


def test_check_dsn_accepts_urls_and_libpq_strings_and_names_its_source() -> None:
    for good in ("postgresql://u@h/db", "postgres://h/db", "host=/tmp dbname=x", " dbname = x"):
        assert check_dsn(good, "dsn") == good
    with pytest.raises(ConfigError, match=r"^dsn: unknown URL scheme 'postgress://'"):
        check_dsn("postgress://u:secret@h/db", "dsn")
    with pytest.raises(ConfigError, match=r"^dsn: not a PostgreSQL URL; expected ") as bad:
        check_dsn("just-a-name", "dsn")
    assert "secret" not in str(bad.value)


async def test_a_library_app_with_a_dsn_typo_fails_to_start_naming_dsn() -> None:
    app = Kerrera("mysql://root@localhost/app")
    with pytest.raises(ConfigError, match=r"^dsn: .*Kerrera needs PostgreSQL, not mysql"):
        await app.start()


def test_a_reader_that_leaves_early_gets_no_traceback(dsn: str, prefix: str) -> None:
    # `kerrera jobs show 1 | head -1`: the reader is gone before the command writes (here
    # `true`, which reads nothing and exits long before the command starts): it stops
    # quietly, without a BrokenPipeError traceback.
    from support import held

    (job,) = Kerrera(dsn, prefix=prefix).sync.insert_all([held.quick.new({"n": 1})])
    for command in (f"jobs show {job.id}", "jobs list", "queues"):
        shell = f"{KERRERA} {command} --dsn '{dsn}' --prefix '{prefix}' | true"
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
        assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, command
