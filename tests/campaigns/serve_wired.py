"""`python -m campaigns.serve_wired serve …` (with the tests directory on PYTHONPATH): the
real `whatsdex serve` (campaigns wired in by `wiring.wire` where the app does not have them).
Engine hosts are started as usual (`python -m whatsdex engine-host`).

`CAMPAIGN_TEST_IN_FLIGHT=n` caps how far ahead a number's messages are queued, so a test can
kill the server while recipients are still waiting to be queued.
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar

from campaigns.wiring import wire
from whatsdex.campaigns import engine
from whatsdex.cli import serve as serve_command
from whatsdex.entry import main as whatsdex_main
from whatsdex.services import Services
from whatsdex.settings import Settings


def main() -> None:
    in_flight = os.environ.get("CAMPAIGN_TEST_IN_FLIGHT")
    if in_flight:
        engine.IN_FLIGHT = int(in_flight)
        engine.BATCH = max(1, int(in_flight) // 2)
    build = serve_command.create_app

    def create_app(settings: Settings, services: Services | None = None, **kwargs: Any
                   ) -> Litestar:
        app = build(settings, services, **kwargs)
        assert services is not None
        wire(app, services)
        return app

    serve_command.create_app = create_app  # type: ignore[assignment]
    whatsdex_main()


if __name__ == "__main__":
    main()
