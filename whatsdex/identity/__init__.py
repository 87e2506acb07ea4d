"""Who is asking: operator, tenants, users, API keys, login sessions, links and the audit log."""
