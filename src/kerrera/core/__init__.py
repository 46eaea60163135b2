"""The core: what a job is, with no I/O.

Jobs and their states, every option and its validation, unique keys, backoff, the
outcomes a worker returns, typed args, cron expressions and crontab entries, workers and
how a stored worker name resolves to code, the node's configuration, the testing modes,
and `current_app()`'s context variable. Nothing here talks to a database, a socket or an
event loop; every other layer builds on it.
"""
