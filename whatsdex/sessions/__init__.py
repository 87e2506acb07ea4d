"""WhatsApp sessions: engines run in engine host child processes, never in the web process."""
