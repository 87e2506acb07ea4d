"""In-process publish/subscribe of product events, per tenant (live dashboard, SSE streams).

Subscribers get a bounded queue: a consumer that stops reading loses the oldest events rather
than making the publisher (the supervisor) wait or grow memory without limit. Durable delivery
(webhooks) does not rely on this bus: it reads from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class BusEvent:
    tenant_id: str
    type: str  # e.g. "session.status", "session.qr"
    data: dict[str, Any] = field(default_factory=dict)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[BusEvent]]] = {}

    def publish(self, event: BusEvent) -> None:
        for queue in list(self._subscribers.get(event.tenant_id, ())):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def close(self) -> None:
        """Tell every open stream the server is stopping, so it ends instead of being waited for."""
        for tenant_id in list(self._subscribers):
            self.publish(BusEvent(tenant_id, "server.closing"))

    def subscriber_count(self, tenant_id: str) -> int:
        return len(self._subscribers.get(tenant_id, ()))

    @contextlib.asynccontextmanager
    async def subscribe(self, tenant_id: str) -> AsyncIterator[asyncio.Queue[BusEvent]]:
        queue: asyncio.Queue[BusEvent] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.setdefault(tenant_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(tenant_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[tenant_id]
