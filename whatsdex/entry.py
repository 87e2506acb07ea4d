"""The entry point: engine hosts start without the web stack; everything else is the CLI."""

from __future__ import annotations

import os
import sys

ENGINE_HOST = "engine-host"


def main() -> None:
    # Everything WhatsDeX writes (database, keys, backups, runtime stores) is for its user only.
    os.umask(0o077)
    if sys.argv[1:2] == [ENGINE_HOST]:
        from whatsdex.sessions.host import main as host_main

        sys.exit(host_main(sys.argv[2:]))
    from whatsdex.cli import main as cli_main

    cli_main()
