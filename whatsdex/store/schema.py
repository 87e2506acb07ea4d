"""The schema, as an ordered list of named migrations. Never edit an applied migration: add one."""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("whatsdex")


def run_script(db: Database, script: str) -> None:
    """Execute statements one by one: `executescript` would commit the migration's transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement.strip()[:80]}")


@MIGRATIONS()
def m0001_instance(db: Database) -> None:
    """Facts about this installation (its id, when it was created), kept with the data."""
    run_script(
        db,
        """
        CREATE TABLE instance (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;
        INSERT INTO instance (key, value) VALUES
            ('id', lower(hex(randomblob(16)))),
            ('created_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
        """,
    )


@MIGRATIONS()
def m0002_identity(db: Database) -> None:
    """Operator, tenants, plans, users, login sessions, API keys, one-purpose tokens, audit."""
    run_script(
        db,
        """
        CREATE TABLE plans (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            max_numbers INTEGER NOT NULL CHECK (max_numbers >= 0),
            max_messages_per_day INTEGER NOT NULL CHECK (max_messages_per_day >= 0),
            max_contacts INTEGER NOT NULL CHECK (max_contacts >= 0),
            max_active_campaigns INTEGER NOT NULL CHECK (max_active_campaigns >= 0),
            max_webhooks INTEGER NOT NULL CHECK (max_webhooks >= 0),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) STRICT;
        INSERT INTO plans VALUES
            ('free', 'Free', 1, 1000, 1000, 1, 1,
             strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            ('premium', 'Premium', 2, 20000, 50000, 5, 5,
             strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

        CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            plan_id TEXT NOT NULL REFERENCES plans(id),
            status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
            timezone TEXT NOT NULL DEFAULT 'UTC',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX tenants_plan ON tenants(plan_id);

        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE COLLATE NOCASE,
            name TEXT NOT NULL DEFAULT '',
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('operator', 'owner', 'member')),
            tenant_id TEXT REFERENCES tenants(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            last_login_at TEXT,
            CHECK ((role = 'operator') = (tenant_id IS NULL))
        ) STRICT;
        CREATE INDEX users_tenant ON users(tenant_id);

        -- Server-side login sessions: the cookie holds a random token, the row its SHA-256.
        CREATE TABLE login_sessions (
            token_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            ip TEXT NOT NULL DEFAULT '',
            user_agent TEXT NOT NULL DEFAULT ''
        ) STRICT;
        CREATE INDEX login_sessions_user ON login_sessions(user_id);
        CREATE INDEX login_sessions_expiry ON login_sessions(expires_at);

        -- API keys: shown once; only the SHA-256 is kept, with a visible prefix to recognise it.
        -- tenant_id NULL = an operator key (for /api/v1/admin).
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant_id TEXT REFERENCES tenants(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            role TEXT NOT NULL DEFAULT 'owner' CHECK (role IN ('operator', 'owner', 'member')),
            prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_by TEXT REFERENCES users(id) ON DELETE SET NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        ) STRICT;
        CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
        CREATE TRIGGER api_keys_role_matches_scope BEFORE INSERT ON api_keys
        WHEN (NEW.role = 'operator') != (NEW.tenant_id IS NULL)
        BEGIN SELECT RAISE(ABORT, 'operator keys have no tenant; tenant keys are owner or member');
        END;

        -- One-purpose links: first-run set-up, invitations, client QR links. Hash only.
        CREATE TABLE link_tokens (
            id TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            purpose TEXT NOT NULL CHECK (purpose IN ('setup', 'invite', 'client_link')),
            tenant_id TEXT REFERENCES tenants(id) ON DELETE CASCADE,
            subject TEXT NOT NULL DEFAULT '',
            role TEXT CHECK (role IS NULL OR role IN ('owner', 'member')),
            created_by TEXT REFERENCES users(id) ON DELETE SET NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT,
            revoked_at TEXT
        ) STRICT;
        CREATE INDEX link_tokens_tenant ON link_tokens(tenant_id, purpose);

        -- Failed logins per account and per client address, for throttling.
        CREATE TABLE login_failures (
            key TEXT PRIMARY KEY,
            failures INTEGER NOT NULL,
            window_started_at TEXT NOT NULL,
            locked_until TEXT
        ) STRICT;

        -- Each tenant's data key, wrapped (AES-256-GCM) by the master key, which is never here.
        CREATE TABLE tenant_keys (
            tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            wrapped_key BLOB NOT NULL,
            master_key_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            rewrapped_at TEXT
        ) STRICT;

        -- Optional escrow of the master key under a passphrase (one file + passphrase = all).
        CREATE TABLE key_escrow (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            kdf TEXT NOT NULL,
            kdf_params TEXT NOT NULL,
            salt BLOB NOT NULL,
            wrapped_master_key BLOB NOT NULL,
            master_key_id TEXT NOT NULL,
            created_at TEXT NOT NULL
        ) STRICT;

        -- Who did what to which object. tenant_id is not a foreign key: the operator's record of
        -- a deleted tenant outlives it (the tenant's own rows are purged with it).
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            tenant_id TEXT,
            actor_type TEXT NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system', 'cli')),
            actor_id TEXT,
            actor_label TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL,
            object_type TEXT NOT NULL DEFAULT '',
            object_id TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '{}',
            ip TEXT NOT NULL DEFAULT ''
        ) STRICT;
        CREATE INDEX audit_log_tenant ON audit_log(tenant_id, id);
        """,
    )


@MIGRATIONS()
def m0003_sessions(db: Database) -> None:
    """Linked numbers, their state history, and the encrypted copy of their WhatsApp store."""
    run_script(
        db,
        """
        CREATE TABLE wa_sessions (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('new', 'connecting', 'pairing', 'connected',
                'reconnecting', 'logged_out', 'banned', 'failed', 'stopped')),
            status_reason TEXT NOT NULL DEFAULT '',
            status_since TEXT NOT NULL,
            -- What the user asked for: the supervisor keeps 'running' numbers connected.
            desired TEXT NOT NULL DEFAULT 'running' CHECK (desired IN ('running', 'stopped')),
            phone TEXT NOT NULL DEFAULT '',
            jid TEXT NOT NULL DEFAULT '',
            lid TEXT NOT NULL DEFAULT '',
            push_name TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX wa_sessions_tenant ON wa_sessions(tenant_id, created_at);

        -- Every state transition with its reason, newest last.
        CREATE TABLE wa_session_history (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES wa_sessions(id) ON DELETE CASCADE,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            from_status TEXT NOT NULL,
            to_status TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT ''
        ) STRICT;
        CREATE INDEX wa_session_history_session ON wa_session_history(session_id, id);

        -- The durable copy of a number's WhatsApp store: AES-256-GCM under the tenant's data key.
        -- clean = 1 when written at a clean shutdown (the runtime file was not used afterwards).
        CREATE TABLE wa_auth_vault (
            session_id TEXT PRIMARY KEY REFERENCES wa_sessions(id) ON DELETE CASCADE,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            blob BLOB NOT NULL,
            clean INTEGER NOT NULL CHECK (clean IN (0, 1)),
            size INTEGER NOT NULL,
            snapshot_at TEXT NOT NULL
        ) STRICT;
        """,
    )
