"""The dashboard's batches pages over HTTP (in process) against a real PostgreSQL: the
list (newest first), one batch's counts, callbacks fired with their jobs and links to
its jobs, escaping of an id with markup, a read-only user, and the engine's listing."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qs

import pytest

pytest.importorskip("jinja2")

import test_web_app

from kerrera import Batch, Kerrera
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.engine.compose import recent_batches
from kerrera.engine.dashboard import Dashboard
from kerrera.web import User

READ_ONLY = User("viewer", "read_only")
seeded, serve = test_web_app.seeded, test_web_app.serve
MARKUP = '<img/src=x/onerror=alert(1)>"&'


async def insert_batch(app: Kerrera, batch_id: str, n: int = 3, **options: Any) -> Batch:
    """A batch of `n` mail jobs with a `cancelled` and a `completed` callback."""
    batch = Batch(
        [Job(queue="mail", worker="app.Mailer", args={"n": i}) for i in range(n)],
        callbacks={
            "cancelled": Job(queue="media", worker="app.OnCancel"),
            "completed": Job(queue="media", worker="app.OnDone"),
        },
        batch_id=batch_id,
        **options,
    )
    await app.insert(batch)
    return batch


async def test_batches_are_listed_newest_first_with_their_counts(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    await insert_batch(seeded, "first")
    await insert_batch(seeded, "second", n=2, open=True)
    sql("UPDATE kerrera_batches SET inserted_at = inserted_at - interval '1 hour' "
        "WHERE batch_id = 'first'")  # fmt: skip
    client = serve()
    page = await client.get("/batches")
    assert page.status_code == 200
    assert re.findall(r'<tr data-batch="([^"]+)"', page.text) == ["second", "first"]
    second = page.text[page.text.index('data-batch="second"') :]
    cells = re.findall(r"<td>(\d+)</td>", second[: second.index("</tr>")])
    assert cells == ["2", "0", "0", "0", "0"]  # total, attempted, completed, cancelled, discarded
    assert ">open</span>" in second[: second.index("</tr>")]
    assert 'href="/batches/second"' in page.text and ">Batches</a>" in page.text
    link = re.search(r'href="/jobs\?([^"]+)">jobs</a>', second)
    assert link and parse_qs(html.unescape(link.group(1)))["q"] == ["meta.batch_id:second"]


async def test_one_batch_shows_counts_fired_callbacks_and_its_jobs(
    seeded: Kerrera, serve: Any
) -> None:
    await insert_batch(seeded, "billing-2026-12")
    members = [j.id for j in await seeded.list_jobs(limit=50) if j.meta.get("batch_id")]
    assert len(members) == 3 and members[0] is not None
    await seeded.cancel_job(members[0])  # the `cancelled` callback fires at once
    client = serve()
    page = await client.get("/batches/billing-2026-12")
    assert page.status_code == 200
    assert 'data-counts="3,1,0,1,0"' in page.text
    assert 'data-open="closed"' in page.text
    fired = dict(re.findall(r'data-callback="(\w+)" data-fired="(\w+)"', page.text))
    assert fired == {"cancelled": "yes", "completed": "no"}
    row = page.text[page.text.index('data-callback="cancelled"') :]
    row = row[: row.index("</tr>")]
    callback = re.search(r'href="/jobs/(\d+)"', row)
    assert callback and "app.OnCancel" in row and "available" in row
    job = await seeded.get_job(int(callback.group(1)))
    assert job is not None and job.meta["callback"] == "cancelled"
    # members and the callback job carry the batch id: 2 + 1 available, 1 cancelled
    assert 'data-state-count="available">available 3<' in page.text
    assert 'data-state-count="cancelled">cancelled 1<' in page.text
    search = await client.get(
        "/jobs?"
        + html.unescape(
            re.search(r'href="/jobs\?([^"]+)">Search its jobs', page.text).group(1)  # type: ignore[union-attr]
        )
    )
    assert search.status_code == 200 and search.text.count("app.Mailer") >= 2
    assert (await client.get("/batches/nope")).status_code == 404
    assert (await client.get("/batches/has%20space")).status_code == 404


async def test_a_batch_id_with_markup_is_shown_inert(seeded: Kerrera, serve: Any) -> None:
    await insert_batch(seeded, MARKUP)
    client = serve()
    listing = await client.get("/batches")
    assert "<img/src=x" not in listing.text and "&lt;img/src=x" in listing.text
    href = re.search(r'<td class="id"><a href="(/batches/[^"]+)"', listing.text)
    assert href and "<" not in href.group(1) and '"' not in href.group(1)
    page = await client.get(html.unescape(href.group(1)))
    assert page.status_code == 200
    assert (
        "<img/src=x" not in page.text
        and "&lt;img/src=x/onerror=alert(1)&gt;&#34;&amp;" in page.text
    )
    assert 'data-counts="3,0,0,0,0"' in page.text
    missing = await client.get("/batches/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert missing.status_code == 404 and "<script>alert(1)" not in missing.text


async def test_a_read_only_user_sees_the_batches_pages(seeded: Kerrera, serve: Any) -> None:
    await insert_batch(seeded, "ro")
    viewer = serve(resolver=lambda _r: READ_ONLY)
    listing = await viewer.get("/batches")
    assert listing.status_code == 200 and 'data-batch="ro"' in listing.text
    page = await viewer.get("/batches/ro")
    assert page.status_code == 200 and 'data-counts="3,0,0,0,0"' in page.text
    assert 'method="post"' not in page.text  # read-only pages: nothing to act on
    assert (await viewer.post("/batches/ro")).status_code == 405
    nobody = serve(resolver=lambda _r: None)
    assert (await nobody.get("/batches")).status_code in (401, 403)
    assert (await nobody.get("/batches/ro")).status_code in (401, 403)


async def test_partial_updates_and_a_database_without_batch_tables(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    await insert_batch(seeded, "live")
    client = serve()
    part = await client.get("/batches/live", headers={"x-kerrera-partial": "1"})
    assert part.status_code == 200 and "<html" not in part.text and "data-counts" in part.text
    sql("ALTER TABLE kerrera_batches RENAME TO kerrera_batches_gone")
    try:
        page = await client.get("/batches")
        assert page.status_code == 200 and "kerrera migrate" in page.text
        assert (await client.get("/batches/live")).status_code == 404
    finally:
        sql("ALTER TABLE kerrera_batches_gone RENAME TO kerrera_batches")


async def test_recent_batches_reads_the_newest_through_a_limit(
    seeded: Kerrera, dsn: str, prefix: str
) -> None:
    for name in ("a", "b", "c"):
        await insert_batch(seeded, name, n=1)
    dash = await Dashboard.connect(dsn, prefix)
    try:
        found = await recent_batches(dash.pool, prefix, limit=2)
        assert [b.batch_id for b in found] == ["c", "b"]
        assert found[0].callbacks == ("cancelled", "completed") and found[0].total == 1
        for bad in (0, 501, True, "5"):
            with pytest.raises(ConfigError, match="option 'limit'"):
                await recent_batches(dash.pool, prefix, limit=bad)  # type: ignore[arg-type]
    finally:
        await dash.close()
