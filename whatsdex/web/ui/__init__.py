"""HTMX dashboard pages and partials."""
