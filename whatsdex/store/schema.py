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


@MIGRATIONS()
def m0004_messaging(db: Database) -> None:
    """Contacts, chats, messages (inbound and the outbound outbox), media, webhooks."""
    run_script(
        db,
        """
        -- People a tenant talks to. phone is E.164 digits without '+'; jid/lid as WhatsApp
        -- reports them (a LID-only sender is matched to its phone once WhatsApp says which).
        CREATE TABLE contacts (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            phone TEXT NOT NULL DEFAULT '',
            jid TEXT NOT NULL DEFAULT '',
            lid TEXT NOT NULL DEFAULT '',
            name TEXT NOT NULL DEFAULT '',
            push_name TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '[]',
            custom TEXT NOT NULL DEFAULT '{}',
            opt_status TEXT NOT NULL DEFAULT 'unknown'
                CHECK (opt_status IN ('unknown', 'opted_in', 'opted_out')),
            opt_changed_at TEXT,
            opt_source TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) STRICT;
        CREATE UNIQUE INDEX contacts_phone ON contacts(tenant_id, phone) WHERE phone != '';
        CREATE INDEX contacts_jid ON contacts(tenant_id, jid) WHERE jid != '';
        CREATE INDEX contacts_lid ON contacts(tenant_id, lid) WHERE lid != '';
        CREATE INDEX contacts_name ON contacts(tenant_id, name);

        -- One conversation of one number with a person or a group.
        CREATE TABLE chats (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            session_id TEXT NOT NULL REFERENCES wa_sessions(id) ON DELETE CASCADE,
            jid TEXT NOT NULL,
            lid TEXT NOT NULL DEFAULT '',
            is_group INTEGER NOT NULL DEFAULT 0,
            contact_id TEXT REFERENCES contacts(id) ON DELETE SET NULL,
            name TEXT NOT NULL DEFAULT '',
            last_message_at TEXT NOT NULL,
            last_preview TEXT NOT NULL DEFAULT '',
            unread INTEGER NOT NULL DEFAULT 0,
            UNIQUE (session_id, jid)
        ) STRICT;
        CREATE INDEX chats_recent ON chats(tenant_id, last_message_at DESC);
        CREATE INDEX chats_session_recent ON chats(session_id, last_message_at DESC);

        -- Every message, both ways. Outbound rows ARE the durable outbox: accepted as
        -- 'queued', marked 'sending' (committed) before the engine call, then 'sent' and
        -- later 'delivered'/'read'/'played' from receipts, or 'failed' with a reason.
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            session_id TEXT NOT NULL REFERENCES wa_sessions(id) ON DELETE CASCADE,
            chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            wa_id TEXT,
            sender_jid TEXT NOT NULL DEFAULT '',
            sender_lid TEXT NOT NULL DEFAULT '',
            sender_phone TEXT NOT NULL DEFAULT '',
            push_name TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            text TEXT NOT NULL DEFAULT '',
            payload TEXT NOT NULL DEFAULT '{}',
            quoted_id TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL CHECK (status IN ('received', 'queued', 'sending', 'sent',
                'delivered', 'read', 'played', 'failed')),
            status_reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT '' CHECK (source IN ('', 'api', 'inbox', 'campaign')),
            priority INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            created_at TEXT NOT NULL,
            wa_timestamp TEXT,
            sent_at TEXT,
            delivered_at TEXT,
            read_at TEXT,
            played_at TEXT,
            failed_at TEXT,
            edited_at TEXT,
            deleted_at TEXT
        ) STRICT;
        CREATE UNIQUE INDEX messages_wa_id ON messages(session_id, wa_id) WHERE wa_id IS NOT NULL;
        CREATE INDEX messages_chat ON messages(chat_id, created_at DESC);
        CREATE INDEX messages_tenant ON messages(tenant_id, created_at DESC);
        -- The delivery queue: what each number still has to send, most urgent first.
        CREATE INDEX messages_outbox ON messages(session_id, priority DESC, created_at)
            WHERE status IN ('queued', 'sending');

        CREATE VIRTUAL TABLE messages_fts USING fts5(
            text, content='messages', content_rowid='rowid', tokenize='unicode61'
        );
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN NEW.text != '' BEGIN
            INSERT INTO messages_fts(rowid, text) VALUES (NEW.rowid, NEW.text);
        END;
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN OLD.text != '' BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, text)
                VALUES ('delete', OLD.rowid, OLD.text);
        END;
        CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, text)
                SELECT 'delete', OLD.rowid, OLD.text WHERE OLD.text != '';
            INSERT INTO messages_fts(rowid, text) SELECT NEW.rowid, NEW.text WHERE NEW.text != '';
        END;

        -- Same Idempotency-Key + same body = the first answer; another body = 409.
        CREATE TABLE idempotency_keys (
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            message_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (tenant_id, key)
        ) STRICT, WITHOUT ROWID;

        -- Uploaded media to send, and downloaded inbound media (a size-capped cache).
        CREATE TABLE media (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            mimetype TEXT NOT NULL,
            size INTEGER NOT NULL,
            filename TEXT NOT NULL DEFAULT '',
            origin TEXT NOT NULL CHECK (origin IN ('upload', 'url', 'base64', 'inbound')),
            data BLOB NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX media_tenant ON media(tenant_id, created_at);
        CREATE INDEX media_cache ON media(origin, last_used_at);

        CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            url TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            events TEXT NOT NULL DEFAULT '["*"]',
            -- Signing secrets, encrypted under the tenant's data key; the previous one stays
            -- valid (both signatures are sent) until rotation_ends_at.
            secret BLOB NOT NULL,
            previous_secret BLOB,
            rotation_ends_at TEXT,
            enabled INTEGER NOT NULL DEFAULT 1,
            disabled_reason TEXT NOT NULL DEFAULT '',
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX webhooks_tenant ON webhooks(tenant_id);

        -- The webhook outbox, written in the same transaction as the event it carries.
        CREATE TABLE webhook_deliveries (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            created_at TEXT NOT NULL,
            delivered_at TEXT,
            last_attempt_at TEXT,
            last_status INTEGER,
            last_error TEXT NOT NULL DEFAULT '',
            request_excerpt TEXT NOT NULL DEFAULT '',
            response_excerpt TEXT NOT NULL DEFAULT '',
            UNIQUE (webhook_id, event_id)
        ) STRICT;
        CREATE INDEX webhook_deliveries_queue ON webhook_deliveries(webhook_id, id)
            WHERE status = 'pending';
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at)
            WHERE status = 'pending';
        CREATE INDEX webhook_deliveries_log ON webhook_deliveries(tenant_id, id DESC);
        """,
    )


@MIGRATIONS()
def m0005_message_counts(db: Database) -> None:
    """Per-number daily message counters, and an index to purge old idempotency keys.

    The plan's messages-per-day limit and the per-number daily cap are checked on every send;
    one counter row per number and UTC day keeps that check constant-time instead of counting
    a whole day of messages each time.
    """
    run_script(
        db,
        """
        CREATE TABLE message_counts (
            session_id TEXT NOT NULL REFERENCES wa_sessions(id) ON DELETE CASCADE,
            day TEXT NOT NULL,  -- YYYY-MM-DD, UTC
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            accepted INTEGER NOT NULL DEFAULT 0,  -- outbound messages accepted (plan limit)
            sent INTEGER NOT NULL DEFAULT 0,  -- handed to WhatsApp (per-number daily cap)
            PRIMARY KEY (session_id, day)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX message_counts_tenant ON message_counts(tenant_id, day);
        CREATE INDEX idempotency_keys_age ON idempotency_keys(created_at);
        """,
    )


@MIGRATIONS()
def m0006_webhook_failures(db: Database) -> None:
    """When a webhook's current run of failed attempts began (automatic disabling needs it),
    and an index for one webhook's delivery log, newest first."""
    run_script(
        db,
        """
        ALTER TABLE webhooks ADD COLUMN failing_since TEXT;
        CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries(webhook_id, id DESC);
        """,
    )


@MIGRATIONS()
def m0007_contacts(db: Database) -> None:
    """Contact lists: a tag index, a newest-first index, and background import jobs."""
    run_script(
        db,
        """
        -- One row per (contact, tag), kept by triggers from contacts.tags (a JSON array), so
        -- "contacts tagged x" is an index lookup whoever writes the contact.
        CREATE TABLE contact_tags (
            tenant_id TEXT NOT NULL,
            tag TEXT NOT NULL,
            contact_id TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            PRIMARY KEY (tenant_id, tag, contact_id)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX contact_tags_contact ON contact_tags(contact_id);
        INSERT OR IGNORE INTO contact_tags (tenant_id, tag, contact_id)
            SELECT c.tenant_id, t.value, c.id
            FROM contacts c, json_each(CASE WHEN json_valid(c.tags) THEN c.tags ELSE '[]' END) t
            WHERE t.type = 'text';
        CREATE TRIGGER contacts_tags_insert AFTER INSERT ON contacts
        WHEN NEW.tags != '[]' AND json_valid(NEW.tags) BEGIN
            INSERT OR IGNORE INTO contact_tags (tenant_id, tag, contact_id)
                SELECT NEW.tenant_id, value, NEW.id FROM json_each(NEW.tags) WHERE type = 'text';
        END;
        CREATE TRIGGER contacts_tags_update AFTER UPDATE OF tags ON contacts
        WHEN NEW.tags != OLD.tags BEGIN
            DELETE FROM contact_tags WHERE contact_id = NEW.id;
            INSERT OR IGNORE INTO contact_tags (tenant_id, tag, contact_id)
                SELECT NEW.tenant_id, value, NEW.id
                FROM json_each(CASE WHEN json_valid(NEW.tags) THEN NEW.tags ELSE '[]' END)
                WHERE type = 'text';
        END;

        -- The contact list's order (newest first) and its cursor.
        CREATE INDEX contacts_recent ON contacts(tenant_id, created_at DESC, id DESC);

        -- Imports run in the background; this row is their progress and their error report.
        -- updated_at is a heartbeat: a running import that stops beating was interrupted.
        CREATE TABLE contact_imports (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
            status_reason TEXT NOT NULL DEFAULT '',
            filename TEXT NOT NULL DEFAULT '',
            options TEXT NOT NULL DEFAULT '{}',
            total INTEGER NOT NULL DEFAULT 0,
            processed INTEGER NOT NULL DEFAULT 0,
            imported INTEGER NOT NULL DEFAULT 0,
            updated INTEGER NOT NULL DEFAULT 0,
            unchanged INTEGER NOT NULL DEFAULT 0,
            skipped INTEGER NOT NULL DEFAULT 0,
            kept_opted_out INTEGER NOT NULL DEFAULT 0,
            errors TEXT NOT NULL DEFAULT '[]',
            created_by TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT
        ) STRICT;
        CREATE INDEX contact_imports_tenant ON contact_imports(tenant_id, created_at DESC);
        """,
    )


@MIGRATIONS()
def m0008_templates(db: Database) -> None:
    """Message templates: a body in the template language, optionally with one attachment."""
    run_script(
        db,
        """
        CREATE TABLE message_templates (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            category TEXT NOT NULL DEFAULT '',
            body TEXT NOT NULL,
            media_id TEXT REFERENCES media(id) ON DELETE SET NULL,
            media_kind TEXT NOT NULL DEFAULT ''
                CHECK (media_kind IN ('', 'image', 'video', 'audio', 'document')),
            filename TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) STRICT;
        CREATE UNIQUE INDEX message_templates_name
            ON message_templates(tenant_id, name COLLATE NOCASE);
        CREATE INDEX message_templates_media ON message_templates(media_id)
            WHERE media_id IS NOT NULL;
        -- A deleted attachment leaves a plain text template, not a kind without a file.
        CREATE TRIGGER message_templates_media_gone AFTER UPDATE OF media_id ON message_templates
        WHEN NEW.media_id IS NULL AND (NEW.media_kind != '' OR NEW.filename != '')
        BEGIN
            UPDATE message_templates SET media_kind = '', filename = '' WHERE id = NEW.id;
        END;
        """,
    )


@MIGRATIONS()
def m0009_campaigns(db: Database) -> None:
    """Campaigns, and one row per recipient of each: the runner's whole state is here."""
    run_script(
        db,
        """
        -- Settings are JSON text (validated by whatsdex/campaigns); the counters are kept in
        -- the same transactions as the recipient rows they count.
        CREATE TABLE campaigns (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            template_id TEXT REFERENCES message_templates(id) ON DELETE SET NULL,
            session_ids TEXT NOT NULL DEFAULT '[]',
            audience TEXT NOT NULL DEFAULT '{}',
            schedule_kind TEXT NOT NULL DEFAULT 'now'
                CHECK (schedule_kind IN ('now', 'at', 'cron')),
            schedule_at TEXT,
            schedule_cron TEXT NOT NULL DEFAULT '',
            timezone TEXT NOT NULL DEFAULT '',
            send_window TEXT NOT NULL DEFAULT '{}',
            pacing TEXT NOT NULL DEFAULT '{}',
            typing_seconds REAL NOT NULL DEFAULT 0,
            message TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'scheduled',
                'running', 'paused', 'completed', 'cancelled', 'failed')),
            status_reason TEXT NOT NULL DEFAULT '',
            targeted INTEGER NOT NULL DEFAULT 0,
            sent INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            skipped INTEGER NOT NULL DEFAULT 0,
            excluded INTEGER NOT NULL DEFAULT 0,
            runs INTEGER NOT NULL DEFAULT 0,
            next_run_at TEXT,
            created_by TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        ) STRICT;
        CREATE INDEX campaigns_tenant ON campaigns(tenant_id, created_at DESC);
        CREATE INDEX campaigns_active ON campaigns(status)
            WHERE status IN ('scheduled', 'running', 'paused');

        -- contact_id is no foreign key: a deleted contact's result stays in the report.
        CREATE TABLE campaign_recipients (
            campaign_id TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
            contact_id TEXT NOT NULL,
            tenant_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            session_id TEXT NOT NULL,
            address TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
            reason TEXT NOT NULL DEFAULT '',
            message_id TEXT,
            text_hash TEXT NOT NULL DEFAULT '',
            attempts INTEGER NOT NULL DEFAULT 0,
            queued_at TEXT,
            done_at TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (campaign_id, contact_id)
        ) STRICT, WITHOUT ROWID;
        -- The runner's "next pending recipient of this number".
        CREATE INDEX campaign_recipients_next ON campaign_recipients(campaign_id, session_id, seq)
            WHERE status = 'pending';
        -- Counts by status (progress, statistics) and the in-flight ones of each number.
        CREATE INDEX campaign_recipients_status
            ON campaign_recipients(campaign_id, status, session_id);
        -- Result pages and the CSV export, in snapshot order.
        CREATE INDEX campaign_recipients_order ON campaign_recipients(campaign_id, seq);
        -- A number's campaign sends per day (daily caps, warm-up), across campaigns.
        CREATE INDEX campaign_recipients_number ON campaign_recipients(session_id, queued_at)
            WHERE queued_at IS NOT NULL;
        -- Campaigns with messages in flight, found at start without a scan.
        CREATE INDEX campaign_recipients_sending ON campaign_recipients(campaign_id)
            WHERE status = 'sending';
        """,
    )
