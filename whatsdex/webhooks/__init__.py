"""Outgoing webhooks: signed (Standard Webhooks), from a durable outbox, retried in order.

`outbox.enqueue` is called inside the writes that produce events; `dispatcher` delivers them;
`manage` is what the API and the dashboard change; `ssrf` keeps requests off private networks.
"""
