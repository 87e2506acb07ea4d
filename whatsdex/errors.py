"""One error hierarchy for the whole product, mapped to HTTP statuses in one place (web/errors)."""

from __future__ import annotations

from typing import Any


class WhatsdexError(Exception):
    """A failure the user can act on: it carries the HTTP status and a readable message."""

    status_code = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadRequest(WhatsdexError):
    status_code = 400


class Unauthorized(WhatsdexError):
    status_code = 401


class Forbidden(WhatsdexError):
    status_code = 403


class NotFound(WhatsdexError):
    status_code = 404


class Conflict(WhatsdexError):
    status_code = 409


class PayloadTooLarge(WhatsdexError):
    status_code = 413


class LimitReached(WhatsdexError):
    """A plan limit or a rate limit; `retry_after` is seconds when waiting helps."""

    status_code = 429

    def __init__(self, message: str, detail: Any = None, retry_after: int | None = None) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


class Unavailable(WhatsdexError):
    status_code = 503


class ConfigError(WhatsdexError):
    """Bad settings: reported by the CLI as one line before anything starts."""

    status_code = 500


class DatabaseTooNew(WhatsdexError):
    """The data file was migrated by a newer WhatsDeX: refuse rather than corrupt it."""

    status_code = 503
