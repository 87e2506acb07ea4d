"""WhatsDeX: a self-hosted, multi-tenant WhatsApp gateway in one process and one SQLite file."""

__version__ = "0.1.0"
