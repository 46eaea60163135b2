"""`python manage.py kerrera migrate|start`: Kerrera's CLI, configured by Django settings.

`migrate` runs `kerrera migrate` on the database and schema of `settings.KERRERA`;
`start` runs a worker node built from every `KERRERA` option, command-line flags
winning, until SIGTERM/SIGINT (the first drains, a second stops at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import logging
from typing import Any

import psycopg

from kerrera import Kerrera, KerreraError, cli
from kerrera.cli.start import parse_queues, run_until_signalled
from kerrera.contrib.django._django import (
    BaseCommand,
    CommandError,
    CommandParser,
    ImproperlyConfigured,
)
from kerrera.contrib.django.conf import KerreraSettings, build_app
from kerrera.contrib.django.shared import reset_app, set_app

#: `kerrera start` runs this when neither the settings nor `--queues` name a queue.
DEFAULT_QUEUES = "default:10"

# Django's own options, accepted after the sub-command too (`kerrera start -v 2`);
# SUPPRESS keeps a sub-command from overwriting what was given before it.
_BASE_FLAGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("-v", "--verbosity"), {"type": int, "choices": [0, 1, 2, 3]}),
    (("--settings",), {}),
    (("--pythonpath",), {}),
    (("--traceback",), {"action": "store_true"}),
    (("--no-color",), {"action": "store_true"}),
    (("--force-color",), {"action": "store_true"}),
    (("--skip-checks",), {"action": "store_true"}),
)


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped
    """`manage.py kerrera migrate [--down N | --status]` and `manage.py kerrera start
    [--queues default:10,mail:2] [--module pkg.workers] [--node NAME] ...`.

    Example:
        python manage.py kerrera migrate
        python manage.py kerrera start --queues default:10,mail:2
    """

    help = "Migrate Kerrera's tables or run a Kerrera worker node, configured by settings."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{migrate,start}")
        mig = _sub(sub, "migrate", "bring Kerrera's schema up to date (or down)")
        mig.add_argument("--down", type=int, metavar="N", help="revert the last N migrations")
        mig.add_argument("--status", action="store_true", help="print the current version")
        start = _sub(sub, "start", "run a worker node until SIGTERM/SIGINT")
        start.add_argument("--queues", help="name:limit,... (default: KERRERA['queues'])")
        start.add_argument(
            "--module", "-m", action="append", default=[],
            help="module defining workers, besides KERRERA['modules'] (repeatable)",
        )  # fmt: skip
        start.add_argument("--node", help="node name (default: hostname-pid)")
        start.add_argument(
            "--shutdown-grace-period", type=float, metavar="SECONDS",
            help="how long running jobs may finish on shutdown (default: 15)",
        )  # fmt: skip
        start.add_argument(
            "--no-migrate", action="store_true",
            help="refuse to start on an out-of-date schema instead of migrating",
        )  # fmt: skip
        start.add_argument(
            "--no-leader", action="store_true",
            help="never lead (the leader runs the stager, pruner, cron and reindexer)",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            conf = KerreraSettings.load()
            # Built before anything runs, so that every bad setting stops every action.
            app = build_app(**_overrides(conf, options))
            if options["action"] == "migrate":
                self._migrate(app, options)
            else:
                self._start(app, conf, options)
        except (KerreraError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CommandError(f"database: {first}") from exc

    def _migrate(self, app: Kerrera, options: dict[str, Any]) -> None:
        argv = ["migrate", "--dsn", app.dsn, "--prefix", app.config.prefix]
        if options["status"]:
            argv.append("--status")
        if options["down"] is not None:
            argv += ["--down", str(options["down"])]
        out, err = io.StringIO(), io.StringIO()
        # kerrera.cli prints; Django commands write to self.stdout (call_command captures).
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        if code:
            raise CommandError(err.getvalue().strip().removeprefix("kerrera: error: "))
        self.stdout.write(out.getvalue().rstrip("\n"))

    def _start(self, app: Kerrera, conf: KerreraSettings, options: dict[str, Any]) -> None:
        for module in (*conf.modules, *options["module"]):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise CommandError(f"cannot import worker module {module!r}: {exc}") from exc
        if options["verbosity"] >= 2:
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logging.getLogger("kerrera").setLevel(logging.INFO)
        set_app(app)
        try:
            asyncio.run(run_until_signalled(app))
        finally:
            reset_app()


def _sub(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    for flags, extra in _BASE_FLAGS:
        parser.add_argument(*flags, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **extra)
    return parser


def _overrides(conf: KerreraSettings, options: dict[str, Any]) -> dict[str, Any]:
    """Options given on the command line, as `Kerrera` keywords."""
    given: dict[str, Any] = {}
    if options["action"] != "start":
        return given
    if options["queues"] is not None:
        given["queues"] = parse_queues(options["queues"])
    elif not conf.options.get("queues"):
        given["queues"] = parse_queues(DEFAULT_QUEUES)
    if options["node"] is not None:
        given["node"] = options["node"]
    if options["shutdown_grace_period"] is not None:
        given["shutdown_grace_period"] = options["shutdown_grace_period"]
    if options["no_migrate"]:
        given["migrate"] = False
    if options["no_leader"]:
        given["leader"] = False
    return given
