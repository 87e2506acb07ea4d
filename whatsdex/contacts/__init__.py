"""Contacts a tenant manages: CRUD, tags, custom fields, consent (opt-in/out, STOP/START),
CSV import in the background with an error report, and export.

`service` validates and writes single contacts, `importer` runs imports (checking rows with
`phones` and `tables`), `export` streams CSV, `optout` handles keywords and answers campaigns.
"""
