"""Campaigns: one template sent to an audience of contacts through chosen numbers, paced, on a
schedule, exactly once per recipient whatever crashes in between.

`service` validates and changes campaigns (every change one transaction, audited, with its
webhook event); `audience` chooses contacts (opted-out ones never); `pacing` decides when a
number may send next (gaps, daily caps with warm-up, send windows); `schedule` keeps the
APScheduler jobs in line with the database; `engine` runs campaigns; `stats` reports on them.
"""

from whatsdex.store.campaigns import ACTIVE, RECIPIENT_STATUSES, STATUSES

__all__ = ["ACTIVE", "RECIPIENT_STATUSES", "STATUSES"]
