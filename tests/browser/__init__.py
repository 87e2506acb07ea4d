"""Browser tests (headless chromium via Playwright)."""
