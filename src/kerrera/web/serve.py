"""`kerrera web`: serve the dashboard with uvicorn, refusing an unsafe bind.

The dashboard acts on jobs and queues, so by default it binds 127.0.0.1 and everyone who
can reach it has full access. A non-loopback bind needs an auth hook (`--basic-auth`,
the password read from an environment variable, or `--resolver module:function`),
unless `--insecure` says the network in front of it guards it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress

import uvicorn

from kerrera import Kerrera
from kerrera.core.errors import ConfigError
from kerrera.web.app import kerrera_web
from kerrera.web.auth import Resolver, basic_auth


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, has_auth: bool, insecure: bool) -> None:
    """Refuse a non-loopback bind without an auth hook, unless `insecure`."""
    if not is_loopback(host) and not has_auth and not insecure:
        raise ConfigError(
            f"option '--host {host}' exposes the dashboard beyond this machine without "
            "authentication: add --basic-auth (password in $KERRERA_WEB_PASSWORD) or "
            "--resolver module:function, or --insecure if something in front guards it"
        )


def load_resolver(spec: str) -> Resolver:
    """`package.module:function` -> the function (the `--resolver` option)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"option '--resolver' must be module:function, got {spec!r}")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"option '--resolver': cannot load {spec!r} ({exc})") from None
    if not callable(found):
        raise ConfigError(f"option '--resolver': {spec!r} is not callable")
    resolver: Resolver = found
    return resolver


def resolver_of(args: argparse.Namespace) -> Resolver | None:
    """The auth hook the options ask for, if any."""
    if args.basic_auth and args.resolver:
        raise ConfigError("options '--basic-auth' and '--resolver' exclude each other")
    if args.basic_auth:
        return basic_auth(access=args.access)
    if args.resolver:
        return load_resolver(args.resolver)
    return None


async def serve(args: argparse.Namespace) -> int:
    """Run the dashboard until a signal stops it (uvicorn handles SIGINT/SIGTERM)."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"option '--port' must be 0-65535, got {args.port}")
    resolver = resolver_of(args)
    check_bind(args.host, resolver is not None, args.insecure)
    probe = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
    dsn = await asyncio.to_thread(lambda: probe.dsn)
    app = kerrera_web(dsn=dsn, prefix=args.prefix, resolver=resolver)
    await app.state.web.ready()  # fail now, not on the first request, if the database is away
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="info", proxy_headers=False,
        server_header=False, timeout_graceful_shutdown=3,
    )  # fmt: skip
    await uvicorn.Server(config).serve()
    await app.state.web.close()
    return 0
