"""Media kept in the database: downloads of sent and received media, and the inbound cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from whatsdex.errors import NotFound, Unavailable
from whatsdex.messaging.media import MediaLibrary
from whatsdex.messaging.outbox import SendRequest
from whatsdex.store import media as media_rows

from .conftest import Rig, make_number, make_tenant, text
from .test_inbound import inbound
from .test_outbox import PNG

KB = 1000


@pytest.fixture
async def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


async def test_sent_media_can_be_downloaded(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    upload = await rig.media.store_upload(tenant, PNG, "p.png")
    message = (await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="image", media_id=upload.id))).message
    row, data = await rig.media.download(tenant, message.id)
    assert (row.id, data) == (upload.id, PNG)
    plain = (await rig.outbox.accept(tenant, text(number))).message
    with pytest.raises(NotFound, match="no media"):
        await rig.media.download(tenant, plain.id)
    other = await make_tenant(rig.store, name="Other")
    with pytest.raises(NotFound):
        await rig.media.download(other, message.id)


async def test_received_media_is_fetched_once_and_cached(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    meta = {"type": "image", "mimetype": "image/png", "size": len(PNG), "direct_path": "/x"}
    await rig.ingest.handle(tenant, inbound(number, "photo", kind="image", media=meta,
                                            wa_id="3AIMG"))
    message_id = str(await rig.store.fetchval("SELECT id FROM messages WHERE wa_id = '3AIMG'"))
    with pytest.raises(Unavailable):  # the sandbox cannot fetch media: no fetcher
        await rig.media.download(tenant, message_id)
    asked: list[tuple[str, str, dict[str, Any]]] = []

    async def fetch(tenant_id: str, session_id: str, media: dict[str, Any]) -> bytes:
        asked.append((tenant_id, session_id, media))
        return PNG

    rig.media.fetch_inbound = fetch
    row, data = await rig.media.download(tenant, message_id)
    assert (data, row.origin, row.mimetype) == (PNG, "inbound", "image/png")
    again, data_again = await rig.media.download(tenant, message_id)
    assert again.id == row.id and data_again == PNG
    assert asked == [(tenant, number, meta)]


async def test_the_inbound_cache_drops_the_least_recently_used(make_rig: Callable[..., Rig]
                                                              ) -> None:
    rig = make_rig()
    library = MediaLibrary(rig.store, rig.settings, rig.clock, cache_bytes=1000 * KB)
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    blobs = {f"3AM{i}": os.urandom(300 * KB) for i in range(5)}

    async def fetch(tenant_id: str, session_id: str, media: dict[str, Any]) -> bytes:
        return blobs[media["wa"]]

    library.fetch_inbound = fetch
    ids = {}
    for wa_id in blobs:
        await rig.ingest.handle(tenant, inbound(number, "", kind="document", wa_id=wa_id,
                                                media={"mimetype": "application/pdf",
                                                       "wa": wa_id}))
        ids[wa_id] = str(await rig.store.fetchval("SELECT id FROM messages WHERE wa_id = ?",
                                                  (wa_id,)))
    upload = await library.store_upload(tenant, PNG, "kept.png")  # uploads are never evicted
    for wa_id in ("3AM0", "3AM1", "3AM2"):
        rig.clock.now += 1
        await library.download(tenant, ids[wa_id])
    rig.clock.now += 1
    await library.download(tenant, ids["3AM0"])  # used again: now the most recent
    for wa_id in ("3AM3", "3AM4"):
        rig.clock.now += 1
        await library.download(tenant, ids[wa_id])
    rows = await rig.store.fetchall(
        "SELECT m.wa_id FROM media d JOIN messages m "
        "ON json_extract(m.payload, '$.media.media_id') = d.id ORDER BY m.wa_id")
    assert [r[0] for r in rows] == ["3AM0", "3AM3", "3AM4"]
    with rig.store.read_sync() as conn:
        assert media_rows.cache_size(conn) <= 1000 * KB
    assert await media_rows.get(rig.store, tenant, upload.id) is not None
    # An evicted file is fetched again when asked for.
    _, data = await library.download(tenant, ids["3AM1"])
    assert data == blobs["3AM1"]
