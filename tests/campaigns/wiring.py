"""This feature added to an app the way `app.py` and `services.py` add it, where they do not
(a no-op when they do): used by the tests and by `serve_wired` (the process test's serve)."""

from __future__ import annotations

from typing import Any

from litestar import Litestar

from whatsdex.campaigns.engine import CampaignEngine
from whatsdex.messaging.delivery import DeliveryService
from whatsdex.messaging.inbound import MessageIngest
from whatsdex.messaging.media import MediaLibrary
from whatsdex.messaging.outbox import Outbox
from whatsdex.services import Services


def wire(app: Litestar, services: Services) -> None:
    """Campaign routes and services (and messaging, if not yet wired) added to an app as
    `app.py` and `services.py` add them once they register this feature: a no-op then."""
    from whatsdex.web.api import campaigns as api_campaigns
    from whatsdex.web.ui import campaigns as ui_campaigns

    paths = {route.path for route in app.routes}
    for marker, routes in (("/api/v1/campaigns", api_campaigns.ROUTES),
                           ("/campaigns", ui_campaigns.ROUTES)):
        if marker not in paths:
            for route in routes:
                app.register(route)
    start, stop = services.start, services.stop
    started: list[Any] = []

    async def start_all() -> None:
        await start()
        started.extend(await attach(services))

    async def stop_all() -> None:
        for service_ in started:
            await service_.stop()
        await stop()

    services.start = start_all  # type: ignore[method-assign]
    services.stop = stop_all  # type: ignore[method-assign]


async def attach(services: Services) -> list[Any]:
    """The messaging services and the campaign engine, attached as `services.py` attaches
    them; returns what was started here (stopped first, campaigns before messaging)."""
    started: list[Any] = []
    if getattr(services, "outbox", None) is None:
        supervisor = services.supervisor
        assert supervisor is not None
        library = MediaLibrary(services.store, services.settings, services.clock)
        ingest = MessageIngest(services.store, services.bus, services.clock)
        supervisor.message_handler = ingest.handle_many
        delivery = DeliveryService(services.store, supervisor, services.bus,
                                   services.settings, services.clock)
        await delivery.start()
        outbox = Outbox(services.store, services.settings, services.clock, library,
                        on_queued=delivery.wake)
        for name, value in (("media", library), ("ingest", ingest), ("delivery", delivery),
                            ("outbox", outbox)):
            setattr(services, name, value)
        started += [delivery, ingest]
    if getattr(services, "campaigns", None) is None:
        engine = CampaignEngine(services.store, services.outbox,  # type: ignore[attr-defined]
                                services.bus, services.clock, services.scheduler)
        await engine.start()
        services.campaigns = engine  # type: ignore[attr-defined]
        started.insert(0, engine)
    return started



