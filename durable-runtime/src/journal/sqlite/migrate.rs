//! The journal's schema: the numbered migrations that create and change it, and the
//! check at every open that the schema is still the one they left.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::identity::APPLICATION_ID;
use super::sql_error;
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::journal::crc::{crc32, keyed_crc32};
use crate::path::StepPath;

/// The journal schema. Entry `n` (0-based) moves the schema from version `n` to `n + 1`.
/// Never edit an entry that has shipped: add one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: workflows, steps and the meta table.
    "CREATE TABLE durable_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE durable_workflows (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
        input       BLOB NOT NULL,
        output      BLOB,
        error_kind  TEXT,
        error       TEXT,
        executor    TEXT NOT NULL,
        app_version TEXT,
        parent_id   TEXT,
        queue       TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX durable_workflows_pending ON durable_workflows (created_at)
        WHERE status = 'pending';
    CREATE TABLE durable_steps (
        workflow_id TEXT NOT NULL,
        path        TEXT NOT NULL,
        name        TEXT NOT NULL,
        output      BLOB,
        error       TEXT,
        attempts    INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (workflow_id, path),
        CHECK ((output IS NULL) <> (error IS NULL))
    ) STRICT, WITHOUT ROWID;",
    // 2: CRC-32 checksums of recorded values, so damage is reported, not decoded. NULL
    // in rows written before version 2 (not checked).
    "ALTER TABLE durable_workflows ADD COLUMN input_crc32 INTEGER;
    ALTER TABLE durable_workflows ADD COLUMN output_crc32 INTEGER;
    ALTER TABLE durable_steps ADD COLUMN crc32 INTEGER;",
    // 3: the workflow primitives. Workflows can be cancelled (a status the CHECK of
    // version 1 refuses, so the table is rebuilt) and have a deadline; step records say
    // what kind of error they hold; messages, events and start records get tables.
    "CREATE TABLE durable_workflows_v3 (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        status       TEXT NOT NULL
                     CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
        input        BLOB NOT NULL,
        output       BLOB,
        error_kind   TEXT,
        error        TEXT,
        executor     TEXT NOT NULL,
        app_version  TEXT,
        parent_id    TEXT,
        queue        TEXT,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        input_crc32  INTEGER,
        output_crc32 INTEGER,
        deadline_at  INTEGER
    ) STRICT;
    INSERT INTO durable_workflows_v3
        (id, name, status, input, output, error_kind, error, executor, app_version,
         parent_id, queue, created_at, updated_at, input_crc32, output_crc32)
        SELECT id, name, status, input, output, error_kind, error, executor, app_version,
               parent_id, queue, created_at, updated_at, input_crc32, output_crc32
        FROM durable_workflows;
    DROP TABLE durable_workflows;
    ALTER TABLE durable_workflows_v3 RENAME TO durable_workflows;
    CREATE INDEX durable_workflows_pending ON durable_workflows (created_at)
        WHERE status = 'pending';
    ALTER TABLE durable_steps ADD COLUMN error_kind TEXT;
    CREATE TABLE durable_messages (
        seq         INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        topic       TEXT NOT NULL,
        payload     BLOB NOT NULL,
        crc32       INTEGER NOT NULL,
        sent_at     INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX durable_messages_queue ON durable_messages (destination, topic, seq);
    CREATE TABLE durable_events (
        workflow_id TEXT NOT NULL,
        key         TEXT NOT NULL,
        value       BLOB NOT NULL,
        crc32       INTEGER NOT NULL,
        set_at      INTEGER NOT NULL,
        PRIMARY KEY (workflow_id, key)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE durable_started (
        workflow_id TEXT NOT NULL,
        path        TEXT NOT NULL,
        name        TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        wake_at     INTEGER,
        PRIMARY KEY (workflow_id, path)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE durable_patches (
        workflow_id TEXT NOT NULL,
        path        TEXT NOT NULL,
        name        TEXT NOT NULL,
        PRIMARY KEY (workflow_id, path, name)
    ) STRICT, WITHOUT ROWID;",
    // 4: every value says its format in its first byte, so journals can hold values of
    // several codecs; the values written so far get the legacy one (bincode, 0x01), and
    // their checksums are recomputed where they matched (a damaged value stays
    // damaged). Steps record a fingerprint of the arguments they were called with.
    "UPDATE durable_workflows SET
         input = durable_legacy_value(input),
         input_crc32 = durable_legacy_crc(input, input_crc32);
    UPDATE durable_workflows SET
         output = durable_legacy_value(output),
         output_crc32 = durable_legacy_crc(output, output_crc32)
     WHERE output IS NOT NULL;
    UPDATE durable_steps SET
         output = durable_legacy_value(output),
         crc32 = durable_legacy_crc(output, crc32)
     WHERE output IS NOT NULL;
    UPDATE durable_messages SET
         payload = durable_legacy_value(payload),
         crc32 = durable_legacy_crc(payload, crc32);
    UPDATE durable_events SET
         value = durable_legacy_value(value),
         crc32 = durable_legacy_crc(value, crc32);
    DELETE FROM durable_meta WHERE key = 'codec';
    ALTER TABLE durable_steps ADD COLUMN args_fingerprint INTEGER;",
    // 5: checksums cover the key a value is recorded under (a workflow's id, a
    // step's workflow, path and name, a message's destination and topic, an event's
    // workflow and key), so that a damaged key is reported instead of putting an intact
    // value in another place. Recomputed where they matched; a damaged value stays
    // damaged, a NULL checksum stays NULL.
    "UPDATE durable_workflows SET
         input_crc32 = durable_keyed_crc(input_crc32, input, id);
    UPDATE durable_workflows SET
         output_crc32 = durable_keyed_crc(output_crc32, output, id)
     WHERE output IS NOT NULL;
    UPDATE durable_steps SET
         crc32 = durable_keyed_crc(crc32, COALESCE(output, CAST(error AS BLOB)),
                                   workflow_id, path, name);
    UPDATE durable_messages SET
         crc32 = durable_keyed_crc(crc32, payload, destination, topic);
    UPDATE durable_events SET
         crc32 = durable_keyed_crc(crc32, value, workflow_id, key);",
    // 6: step paths sort byte by byte as paths do (`3.b12`: a position of two or more
    // digits after a letter that says how many), so a replay reads a run's steps in
    // path order, in batches, from the primary key. Only paths with a position of ten
    // or more change; a step's checksum moves to its new key where it matched the old
    // one (a damaged row stays damaged), and a path that is not one stays as it is.
    "UPDATE durable_steps SET
         path = COALESCE(durable_path_key(path), path),
         crc32 = durable_rekeyed_step_crc(crc32, COALESCE(output, CAST(error AS BLOB)),
                                          workflow_id, path, name)
     WHERE path GLOB '*[0-9][0-9]*';
    UPDATE durable_started SET path = COALESCE(durable_path_key(path), path)
     WHERE path GLOB '*[0-9][0-9]*';
    UPDATE durable_patches SET path = COALESCE(durable_path_key(path), path)
     WHERE path GLOB '*[0-9][0-9]*';",
    // 7: integer run keys. Each workflow run gets a number, `run`, its table's integer
    // primary key (kept by VACUUM; AUTOINCREMENT, so a number is never given twice and
    // rows left by a workflow deleted by hand never attach to a new one), and the rows
    // recorded for it (steps, events, start records, patches) are keyed by that number
    // instead of repeating the workflow's id. Checksums stay keyed by the id, so none is recomputed. Runs are numbered in
    // the order they were created. (`before_migration_7` refuses a journal with rows
    // that belong to no workflow, which this would drop.) Start records and patch
    // markers get checksums like every other row (NULL in the rows copied, which are
    // not checked, as steps written before version 2 are not).
    "CREATE TABLE durable_workflows_v7 (
        run          INTEGER PRIMARY KEY AUTOINCREMENT,
        id           TEXT NOT NULL UNIQUE,
        name         TEXT NOT NULL,
        status       TEXT NOT NULL
                     CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
        input        BLOB NOT NULL,
        output       BLOB,
        error_kind   TEXT,
        error        TEXT,
        executor     TEXT NOT NULL,
        app_version  TEXT,
        parent_id    TEXT,
        queue        TEXT,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        input_crc32  INTEGER,
        output_crc32 INTEGER,
        deadline_at  INTEGER
    ) STRICT;
    INSERT INTO durable_workflows_v7
        (id, name, status, input, output, error_kind, error, executor, app_version,
         parent_id, queue, created_at, updated_at, input_crc32, output_crc32, deadline_at)
        SELECT id, name, status, input, output, error_kind, error, executor, app_version,
               parent_id, queue, created_at, updated_at, input_crc32, output_crc32,
               deadline_at
        FROM durable_workflows ORDER BY rowid;
    CREATE TABLE durable_steps_v7 (
        run              INTEGER NOT NULL,
        path             TEXT NOT NULL,
        name             TEXT NOT NULL,
        output           BLOB,
        error            TEXT,
        attempts         INTEGER NOT NULL,
        started_at       INTEGER NOT NULL,
        finished_at      INTEGER NOT NULL,
        crc32            INTEGER,
        error_kind       TEXT,
        args_fingerprint INTEGER,
        PRIMARY KEY (run, path),
        CHECK ((output IS NULL) <> (error IS NULL))
    ) STRICT, WITHOUT ROWID;
    INSERT INTO durable_steps_v7
        SELECT w.run, s.path, s.name, s.output, s.error, s.attempts, s.started_at,
               s.finished_at, s.crc32, s.error_kind, s.args_fingerprint
        FROM durable_steps s JOIN durable_workflows_v7 w ON w.id = s.workflow_id
        ORDER BY w.run, s.path;
    CREATE TABLE durable_events_v7 (
        run    INTEGER NOT NULL,
        key    TEXT NOT NULL,
        value  BLOB NOT NULL,
        crc32  INTEGER NOT NULL,
        set_at INTEGER NOT NULL,
        PRIMARY KEY (run, key)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO durable_events_v7
        SELECT w.run, e.key, e.value, e.crc32, e.set_at
        FROM durable_events e JOIN durable_workflows_v7 w ON w.id = e.workflow_id;
    CREATE TABLE durable_started_v7 (
        run        INTEGER NOT NULL,
        path       TEXT NOT NULL,
        name       TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        wake_at    INTEGER,
        crc32      INTEGER,
        PRIMARY KEY (run, path)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO durable_started_v7
        SELECT w.run, t.path, t.name, t.started_at, t.wake_at, NULL
        FROM durable_started t JOIN durable_workflows_v7 w ON w.id = t.workflow_id;
    CREATE TABLE durable_patches_v7 (
        run  INTEGER NOT NULL,
        path TEXT NOT NULL,
        name  TEXT NOT NULL,
        crc32 INTEGER,
        PRIMARY KEY (run, path, name)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO durable_patches_v7
        SELECT w.run, p.path, p.name, NULL
        FROM durable_patches p JOIN durable_workflows_v7 w ON w.id = p.workflow_id;
    DROP TABLE durable_workflows;
    DROP TABLE durable_steps;
    DROP TABLE durable_events;
    DROP TABLE durable_started;
    DROP TABLE durable_patches;
    ALTER TABLE durable_workflows_v7 RENAME TO durable_workflows;
    ALTER TABLE durable_steps_v7 RENAME TO durable_steps;
    ALTER TABLE durable_events_v7 RENAME TO durable_events;
    ALTER TABLE durable_started_v7 RENAME TO durable_started;
    ALTER TABLE durable_patches_v7 RENAME TO durable_patches;
    CREATE INDEX durable_workflows_pending ON durable_workflows (created_at)
        WHERE status = 'pending';",
    // Version 8: what the writer keeps of each dormant run (see `sqlite::dormant`), so
    // that an open re-parks it without replaying it. A cache: a row that is missing
    // costs a replay, one that disagrees with its run is never read (it is deleted in
    // the commit of the run's next write).
    "CREATE TABLE durable_dormant (
        run   INTEGER PRIMARY KEY,
        build TEXT NOT NULL,
        until INTEGER,
        waits BLOB NOT NULL,
        crc32 INTEGER NOT NULL
    ) STRICT;",
    // Version 9: the status check as comparisons. As `status IN (...)` of four values,
    // SQLite built a temporary b-tree of the list for every insert of a workflow and
    // every change of its status: 36% of the instructions a one-step workflow cost. The
    // check allows the same four values; only its text changes, in place, as SQLite
    // documents for a changed CHECK constraint (`PRAGMA writable_schema`, no row
    // rewritten), so the upgrade takes the same time on any journal. Run by
    // `rewrite_status_check`, which refuses a journal where the old check is not found.
    "UPDATE sqlite_master SET sql = replace(sql,
         'CHECK (status IN (''pending'', ''completed'', ''failed'', ''cancelled''))',
         'CHECK (status = ''pending'' OR status = ''completed'' OR status = ''failed'' OR status = ''cancelled'')')
     WHERE type = 'table' AND name = 'durable_workflows'
       AND instr(sql, 'CHECK (status IN (''pending'', ''completed'', ''failed'', ''cancelled''))') > 0",
    // Version 10: queues. A queued workflow is a workflow row with its queue's columns
    // (`queue` was reserved for it since version 1): its state in the queue, priority,
    // partition, deduplication id, delay and timeout, and when it was first dispatched
    // (what the rate limit counts). Added at the end of the row and NULL for every
    // workflow that was not enqueued (a byte of record header each). A running one
    // holds a slot while its row is pending: the counts are read from the rows, never
    // kept beside them, so finishing or cancelling a workflow frees its slot in the same
    // commit. `durable_queues` holds each queue's limits, so that a change made at run
    // time holds in every process and across restarts.
    "ALTER TABLE durable_workflows ADD COLUMN queue_state TEXT
         CHECK (queue_state IS NULL OR queue_state = 'queued' OR queue_state = 'running'
                OR queue_state = 'held');
    ALTER TABLE durable_workflows ADD COLUMN priority INTEGER;
    ALTER TABLE durable_workflows ADD COLUMN partition_key TEXT;
    ALTER TABLE durable_workflows ADD COLUMN dedup_id TEXT;
    ALTER TABLE durable_workflows ADD COLUMN not_before INTEGER;
    ALTER TABLE durable_workflows ADD COLUMN timeout_ms INTEGER;
    ALTER TABLE durable_workflows ADD COLUMN dispatched_at INTEGER;
    CREATE INDEX durable_queue_waiting ON durable_workflows (queue, partition_key, priority, run)
        WHERE queue_state = 'queued' AND status = 'pending';
    CREATE INDEX durable_queue_running ON durable_workflows (queue, partition_key)
        WHERE queue_state = 'running' AND status = 'pending';
    CREATE INDEX durable_queue_held ON durable_workflows (queue)
        WHERE queue_state = 'held' AND status = 'pending';
    CREATE INDEX durable_queue_starts ON durable_workflows (queue, dispatched_at)
        WHERE dispatched_at IS NOT NULL;
    CREATE UNIQUE INDEX durable_queue_dedup ON durable_workflows (queue, dedup_id)
        WHERE dedup_id IS NOT NULL AND status = 'pending';
    CREATE TABLE durable_queues (
        name                  TEXT PRIMARY KEY,
        concurrency           INTEGER,
        per_process           INTEGER,
        partition_concurrency INTEGER,
        rate_count            INTEGER,
        rate_period_ms        INTEGER,
        paused                INTEGER NOT NULL DEFAULT 0,
        set_at_run_time       INTEGER NOT NULL DEFAULT 0,
        updated_at            INTEGER NOT NULL
    ) STRICT;",
    // Version 11: cron schedules. A schedule is declared in code; its row keeps how far
    // its ticks are done (every tick up to `done_through`, in milliseconds since the
    // epoch, was started or passed over) and whether it is paused, so that a restart
    // neither repeats a tick nor runs every tick it missed. The expression and zone
    // last declared are kept for people reading the journal. The workflow a tick starts
    // is an ordinary row, under an id made from the schedule's name and the tick.
    "CREATE TABLE durable_schedules (
        name         TEXT PRIMARY KEY,
        expression   TEXT NOT NULL,
        time_zone    TEXT NOT NULL,
        done_through INTEGER NOT NULL,
        paused       INTEGER NOT NULL DEFAULT 0,
        updated_at   INTEGER NOT NULL
    ) STRICT;",
    // Version 12: commands from other processes (`Client`). A client cannot write the
    // journal's state while a runtime owns it, so it records what it asks for here
    // (a message to send, a workflow to cancel or resume) and the runtime applies each
    // in `seq` order: at once if it runs, at its next open if not. `applied_at` and
    // `outcome` are set when it is applied, in the transaction that applies it for a
    // send. `crc32` covers the command's kind, workflow id, topic and payload.
    "CREATE TABLE durable_commands (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL CHECK (kind IN ('send', 'cancel', 'resume')),
        workflow_id TEXT NOT NULL,
        topic       TEXT,
        payload     BLOB,
        crc32       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        applied_at  INTEGER,
        outcome     TEXT
    ) STRICT;
    CREATE INDEX durable_commands_waiting ON durable_commands (seq) WHERE applied_at IS NULL;",
    // Version 13: when each attempt of a step that retried started and ended, so a
    // timeline shows every attempt and the waits between them. `start:end` per attempt
    // in milliseconds since the epoch, comma-separated; NULL for a step that ran once
    // (its attempt is `started_at` to `finished_at`), and in rows from before. Not
    // covered by the checksum: it is shown, never replayed.
    "ALTER TABLE durable_steps ADD COLUMN attempt_times TEXT;",
    // Version 14: forks. A fork is a new run that starts with copies of another run's
    // steps before a given step; `forked_from` names that run (NULL for every other
    // run). Clients may ask for one: `durable_commands` is rebuilt with the kind
    // `fork` allowed and the fork's step (`from_step`) and new id (`new_id`).
    "ALTER TABLE durable_workflows ADD COLUMN forked_from TEXT;
    CREATE TABLE durable_commands_v14 (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL CHECK (kind IN ('send', 'cancel', 'resume', 'fork')),
        workflow_id TEXT NOT NULL,
        topic       TEXT,
        payload     BLOB,
        from_step   TEXT,
        new_id      TEXT,
        crc32       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        applied_at  INTEGER,
        outcome     TEXT
    ) STRICT;
    INSERT INTO durable_commands_v14
        (seq, kind, workflow_id, topic, payload, crc32, created_at, applied_at, outcome)
        SELECT seq, kind, workflow_id, topic, payload, crc32, created_at, applied_at, outcome
        FROM durable_commands;
    DROP TABLE durable_commands;
    ALTER TABLE durable_commands_v14 RENAME TO durable_commands;
    CREATE INDEX durable_commands_waiting ON durable_commands (seq) WHERE applied_at IS NULL;",
    // Version 15: clients may start a workflow by name. `durable_commands` is rebuilt
    // with the kind `start` allowed: its `workflow_id` is the new workflow's id, its
    // `topic` the workflow's name and its `payload` the encoded input.
    "CREATE TABLE durable_commands_v15 (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL CHECK (kind IN ('send', 'cancel', 'resume', 'fork', 'start')),
        workflow_id TEXT NOT NULL,
        topic       TEXT,
        payload     BLOB,
        from_step   TEXT,
        new_id      TEXT,
        crc32       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        applied_at  INTEGER,
        outcome     TEXT
    ) STRICT;
    INSERT INTO durable_commands_v15 SELECT * FROM durable_commands;
    DROP TABLE durable_commands;
    ALTER TABLE durable_commands_v15 RENAME TO durable_commands;
    CREATE INDEX durable_commands_waiting ON durable_commands (seq) WHERE applied_at IS NULL;",
    // Version 16: when a runtime started a run again from its journal (at an open after
    // the process stopped, or at a resume), replaying the steps recorded before without
    // running them: milliseconds since the epoch, comma-separated, oldest first. NULL
    // for a run never restarted (and in rows from before). Not covered by the
    // checksum: it is shown, never replayed.
    "ALTER TABLE durable_workflows ADD COLUMN replays TEXT;",
];

/// Brings the schema to the newest version, in one transaction.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let err = |e| Error::from(sql_error(path, e));
    register_functions(conn).map_err(err)?;
    // A migration that rebuilds a table drops the old one and renames the new one into
    // place. By default SQLite checks every view and trigger in the file at a rename,
    // and an application's view of the table fails that check in between; it is
    // checked after the migration instead (`AppObjects`).
    conn.pragma_update(None, "legacy_alter_table", true)
        .map_err(err)?;
    let migrated = migrate_in(conn, path);
    let reset = conn
        .pragma_update(None, "legacy_alter_table", false)
        .map_err(err);
    migrated.and(reset)
}

/// [`migrate`], once SQLite is set for it.
fn migrate_in(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let err = |e| Error::from(sql_error(path, e));
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let version = schema_version(&tx, path)?;
    if version > MIGRATIONS.len() {
        return Err(newer_schema(path, version));
    }
    if version == 0 {
        let id: i64 = tx
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(err)?;
        if id == i64::from(APPLICATION_ID) {
            return Err(StoreError::new(
                path,
                StoreErrorKind::Damaged,
                "the journal is damaged: its header names it a durable journal, but it has \
                 no durable_meta table; restore it from a backup",
            )
            .into());
        }
    }
    if (SCHEMA_RECORDED_SINCE..MIGRATIONS.len()).contains(&version) {
        // Checked before the migrations, which record the schema anew: a change made
        // by hand must not become the record of the next version.
        check_schema(&tx, path)?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        if i + 1 == 4 {
            before_migration_4(&tx, path)?;
        }
        let app = if i + 1 == 7 {
            Some(before_migration_7(&tx, path)?)
        } else {
            None
        };
        if i + 1 == 9 {
            rewrite_status_check(&tx, path, sql)?;
        } else {
            tx.execute_batch(sql).map_err(err)?;
        }
        if let Some(app) = app {
            after_migration_7(&tx, path, app)?;
        }
        tx.execute(
            "INSERT INTO durable_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(i + 1).to_string()],
        )
        .map_err(err)?;
    }
    if version < MIGRATIONS.len() {
        record_schema(&tx, path)?;
    }
    check_schema(&tx, path)?;
    keep_run_numbers_unique(&tx, path)?;
    // Queued workflows held by the last process (they stopped there without an
    // outcome) are queued again: this program may be the fix.
    tx.execute(
        "UPDATE durable_workflows SET queue_state = 'queued'
         WHERE queue_state = 'held' AND status = 'pending'",
        [],
    )
    .map_err(err)?;
    tx.commit().map_err(err)
}

/// Migration 9: runs `update`, the rewrite of `durable_workflows`' status check in
/// SQLite's own copy of its `CREATE TABLE`, as SQLite documents for a constraint
/// changed without rewriting rows: with `writable_schema` on, then a new schema cookie
/// so that every connection reads the table's definition again. Refuses (and so
/// changes nothing: the caller's transaction rolls back) a journal whose table does
/// not have the old check, or whose definition does not read back.
fn rewrite_status_check(tx: &Connection, path: &Path, update: &str) -> Result<(), Error> {
    use rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE;
    let err = |e| Error::from(sql_error(path, e));
    let cookie: i64 = tx
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(err)?;
    // A SQLite built defensive by default (`SQLITE_DEFAULT_DEFENSIVE`) ignores
    // `writable_schema`: off for this connection while the rewrite runs.
    let defensive = tx.db_config(SQLITE_DBCONFIG_DEFENSIVE).map_err(err)?;
    if defensive {
        tx.set_db_config(SQLITE_DBCONFIG_DEFENSIVE, false)
            .map_err(err)?;
    }
    let rewritten = tx
        .pragma_update(None, "writable_schema", true)
        .and_then(|()| {
            let changed = tx.execute(update, []);
            let bumped = tx.pragma_update(None, "schema_version", cookie + 1);
            let off = tx.pragma_update(None, "writable_schema", false);
            let changed = changed?;
            bumped?;
            off.map(|()| changed)
        });
    let restored = if defensive {
        tx.set_db_config(SQLITE_DBCONFIG_DEFENSIVE, true).map(drop)
    } else {
        Ok(())
    };
    let changed = rewritten.map_err(err)?;
    restored.map_err(err)?;
    if changed != 1 {
        return Err(damaged_schema(
            path,
            "durable_workflows does not have the status check schema 8 made".into(),
        ));
    }
    // The new definition parses, and the check still holds for every row.
    let bad: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM durable_workflows
              WHERE status NOT IN ('pending', 'completed', 'failed', 'cancelled')",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if bad > 0 {
        return Err(damaged_schema(
            path,
            format!("{bad} workflow(s) have a status durable never writes"),
        ));
    }
    Ok(())
}

/// Makes sure the next run number is above every number a row carries. SQLite's
/// AUTOINCREMENT counter (`sqlite_sequence`) never gives a number twice, unless it is
/// reset by hand (`DELETE FROM sqlite_sequence`, a common reset idiom): then, if the
/// workflow with the highest number was also deleted by hand, leaving its rows, the
/// next workflow would get its number and take those rows as its own. A counter
/// behind the rows is moved past them, with a warning (the rows left stay orphans,
/// which `check` reports). Costs two row reads when the counter is where it should be.
fn keep_run_numbers_unique(tx: &Connection, path: &Path) -> Result<(), Error> {
    let err = |e| Error::from(sql_error(path, e));
    // The usual case reads two rows: a counter at or past the last workflow's number.
    // Only a counter behind it (or gone) makes the rows of the other tables matter; a
    // damaged page among those is left to `check`, which reports it per workflow,
    // rather than refusing the whole journal here.
    let (last, counter): (Option<i64>, Option<i64>) = tx
        .query_row(
            "SELECT (SELECT max(run) FROM durable_workflows),
                    (SELECT max(seq) FROM sqlite_sequence WHERE name = 'durable_workflows')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    if counter.is_some_and(|c| last.is_none_or(|l| c >= l)) {
        return Ok(());
    }
    let highest: rusqlite::Result<Option<i64>> = tx.query_row(
        "SELECT max(m) FROM (
             SELECT max(run) AS m FROM durable_workflows
             UNION ALL SELECT max(run) FROM durable_steps
             UNION ALL SELECT max(run) FROM durable_events
             UNION ALL SELECT max(run) FROM durable_started
             UNION ALL SELECT max(run) FROM durable_patches)",
        [],
        |r| r.get(0),
    );
    let highest = match highest {
        Ok(Some(highest)) => highest,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!(
                journal = %path.display(),
                "cannot read the highest run number the journal's rows carry ({e}); the \
                 counter of run numbers is left as it is"
            );
            return Ok(());
        }
    };
    if counter.is_some_and(|c| c >= highest) {
        return Ok(());
    }
    tracing::warn!(
        journal = %path.display(),
        "the journal's counter of run numbers ({}) is behind the rows it holds (run {highest}): \
         it was reset outside durable; moving it past them so that no new workflow takes \
         another's rows",
        counter.map_or_else(|| "none".to_owned(), |c| c.to_string()),
    );
    tx.execute(
        "DELETE FROM sqlite_sequence WHERE name = 'durable_workflows'",
        [],
    )
    .map_err(err)?;
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('durable_workflows', ?1)",
        [highest],
    )
    .map_err(err)?;
    Ok(())
}

/// The schema version of the journal `conn` has open, as `durable_meta` records it: `0`
/// for a database without durable's tables (a new journal).
pub(super) fn schema_version(conn: &Connection, path: &Path) -> Result<usize, Error> {
    let err = |e| Error::from(sql_error(path, e));
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'durable_meta')",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if !has_meta {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM durable_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| match e.sqlite_error_code() {
            // SQLITE_ERROR, or an error of rusqlite's own (the statement no longer fits
            // the table, the value is not text): durable_meta is not as durable made it.
            Some(rusqlite::ErrorCode::Unknown) | None => schema_damaged(path, &e),
            _ => err(e),
        })?;
    match v.as_deref().map(str::parse::<usize>) {
        Some(Ok(v)) => Ok(v),
        _ => Err(StoreError::new(
            path,
            StoreErrorKind::Damaged,
            "durable_meta has no valid schema_version; the journal is damaged",
        )
        .into()),
    }
}

/// The error for a journal at schema `version`, newer than this build knows.
pub(super) fn newer_schema(path: &Path, version: usize) -> Error {
    StoreError::new(
        path,
        StoreErrorKind::NewerSchema,
        format!(
            "journal schema version {version} is newer than this build of durable understands ({}); upgrade durable-runtime",
            MIGRATIONS.len()
        ),
    )
    .into()
}

/// The codec that wrote every value of a journal older than schema 4.
const LEGACY_CODEC: &str = "bincode-2/serde/standard";

/// Migration 4 gives every recorded value a format byte; before it, a journal named one
/// codec for all its values, and only one ever existed.
fn before_migration_4(tx: &Connection, path: &Path) -> Result<(), Error> {
    let codec: Option<String> = tx
        .query_row(
            "SELECT value FROM durable_meta WHERE key = 'codec'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_error(path, e))?;
    match codec.as_deref() {
        None | Some(LEGACY_CODEC) => Ok(()),
        Some(other) => Err(StoreError::new(
            path,
            StoreErrorKind::NotAJournal,
            format!(
                "the journal says its values are encoded with `{other}`, which no version of \
                 durable wrote; it is left untouched"
            ),
        )
        .into()),
    }
}

/// The application's own indexes, triggers and views on durable's tables, which a
/// migration that rebuilds those tables (7) would drop (indexes, triggers) or leave
/// pointing at columns that are gone (views).
struct AppObjects {
    /// Indexes and triggers on the tables migration 7 rebuilds: type, name, table, and
    /// the SQL that makes them again.
    recreate: Vec<(String, String, String, String)>,
    /// Views that name a durable table, whatever their own names.
    views: Vec<String>,
}

impl AppObjects {
    fn on_durable_tables(tx: &Connection) -> rusqlite::Result<AppObjects> {
        let mut stmt = tx.prepare(
            "SELECT type, name, tbl_name, sql FROM sqlite_master
             WHERE type IN ('index', 'trigger') AND sql IS NOT NULL
               AND name NOT GLOB 'durable_*'
               AND tbl_name IN ('durable_workflows', 'durable_steps', 'durable_events',
                                'durable_started', 'durable_patches')
             ORDER BY type, name",
        )?;
        let recreate = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = tx.prepare(
            "SELECT name FROM sqlite_master
             WHERE type = 'view' AND sql GLOB '*durable_*'
             ORDER BY name",
        )?;
        let views = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(AppObjects { recreate, views })
    }

    /// Makes the indexes and triggers again on the rebuilt tables, and checks that the
    /// views still read: one that no longer fits refuses the upgrade (rolled back, so
    /// nothing changes), naming it, rather than being lost or broken silently.
    fn restore(self, tx: &Connection, path: &Path, version: u32) -> Result<(), Error> {
        let refuse = |what: String, e: rusqlite::Error| -> Error {
            StoreError::new(
                path,
                StoreErrorKind::Io,
                format!(
                    "cannot upgrade the journal to schema version {version}: {what} does not \
                     fit durable's new tables (SQLite says: {e}); since version 7 the rows \
                     recorded for a workflow carry its run number `run`, not `workflow_id` \
                     (see durable's docs/journal.md). Drop or rewrite it, then open the \
                     journal again; nothing was changed"
                ),
            )
            .into()
        };
        for (kind, name, table, sql) in self.recreate {
            let what = || format!("the application's {kind} `{name}` on {table}");
            tx.execute_batch(&sql).map_err(|e| refuse(what(), e))?;
            if kind == "trigger" {
                // SQLite compiles a trigger's body only into a statement that fires
                // it: prepare (never run) one of each kind on its table.
                for fires in statements_on(tx, &table).map_err(|e| refuse(what(), e))? {
                    tx.prepare(&fires).map_err(|e| refuse(what(), e))?;
                }
            }
        }
        for name in self.views {
            let read = format!("SELECT * FROM \"{}\" LIMIT 0", name.replace('"', "\"\""));
            if let Err(e) = tx.prepare(&read) {
                return Err(refuse(format!("the application's view `{name}`"), e));
            }
        }
        Ok(())
    }
}

/// An insert, an update of every column and a delete on `table`, that change nothing:
/// what any trigger on it could fire for.
fn statements_on(tx: &Connection, table: &str) -> rusqlite::Result<[String; 3]> {
    let columns: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let list = columns
        .iter()
        .map(|c| quoted(c))
        .collect::<Vec<_>>()
        .join(", ");
    let t = quoted(table);
    Ok([
        format!("INSERT INTO {t} SELECT * FROM {t} WHERE 0"),
        format!("UPDATE {t} SET ({list}) = ({list}) WHERE 0"),
        format!("DELETE FROM {t} WHERE 0"),
    ])
}

/// Migration 7 keys every row recorded for a run by the run's number, found through its
/// workflow's id: a row whose id names no workflow would be dropped. No version of
/// durable writes one, so such a row means damage; the journal is left untouched, and
/// the error says where. Returns the application's objects the migration drops, to be
/// made again by [`after_migration_7`].
fn before_migration_7(tx: &Connection, path: &Path) -> Result<AppObjects, Error> {
    let orphan: Option<(String, String)> = tx
        .query_row(
            "SELECT what, workflow_id FROM (
                 SELECT 'step ' || path AS what, workflow_id FROM durable_steps
                 UNION ALL SELECT 'event ' || key, workflow_id FROM durable_events
                 UNION ALL SELECT 'start record ' || path, workflow_id FROM durable_started
                 UNION ALL SELECT 'patch ' || name, workflow_id FROM durable_patches
             ) WHERE workflow_id NOT IN (SELECT id FROM durable_workflows) LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| sql_error(path, e))?;
    match orphan {
        None => AppObjects::on_durable_tables(tx).map_err(|e| sql_error(path, e).into()),
        Some((what, id)) => Err(StoreError::new(
            path,
            StoreErrorKind::Damaged,
            format!(
                "the journal is damaged: it holds a {what} of workflow `{id}`, which is not \
                 in it, so it cannot be upgraded to schema 7 (it is left untouched); restore \
                 it from a backup, or delete the rows of workflows that do not exist and \
                 open it again"
            ),
        )
        .into()),
    }
}

/// The rest of migration 7: the application's objects made again, and the header's
/// `application_id` naming the file as durable's.
fn after_migration_7(tx: &Connection, path: &Path, app: AppObjects) -> Result<(), Error> {
    app.restore(tx, path, 7)?;
    tx.pragma_update(None, "application_id", i64::from(APPLICATION_ID))
        .map_err(|e| sql_error(path, e).into())
}

/// SQL functions the migrations use.
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    // `durable_keyed_crc(crc, value, key...)`: the checksum of `value` under `key` (see
    // `keyed_crc32`) if `crc` was its plain checksum; otherwise `crc` unchanged, so a
    // damaged value stays damaged (and a NULL, unchecked one stays unchecked).
    conn.create_scalar_function(
        "durable_keyed_crc",
        -1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let crc: Option<i64> = ctx.get(0)?;
            // The bytes of every part, as stored: a part that is not text or a blob (a
            // damaged row) leaves the checksum as it was, so the row reads as damaged
            // after the migration, for its workflow alone.
            let bytes = |i| stored_bytes(ctx, i);
            let (Some(value), Some(key)) = (
                bytes(1),
                (2..ctx.len()).map(bytes).collect::<Option<Vec<&[u8]>>>(),
            ) else {
                return Ok(crc);
            };
            Ok(crc.map(|crc| {
                if crc == i64::from(crc32(value)) {
                    i64::from(keyed_crc32(&key, value))
                } else {
                    crc
                }
            }))
        },
    )?;
    // `durable_path_key(path)`: a step path as schema 5 wrote it (`3.12`), as schema 6
    // writes it (`3.b12`); NULL for anything else (a damaged path, kept as it is).
    conn.create_scalar_function(
        "durable_path_key",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                rusqlite::types::ValueRef::Text(t) => path_key(t),
                _ => None,
            })
        },
    )?;
    // `durable_rekeyed_step_crc(crc, value, workflow_id, path, name)`: the checksum of
    // a step's `value` under the key of its path as schema 6 writes it, if `crc` was
    // its checksum under the key of schema 5; otherwise `crc` unchanged.
    conn.create_scalar_function(
        "durable_rekeyed_step_crc",
        5,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let crc: Option<i64> = ctx.get(0)?;
            let bytes = |i| stored_bytes(ctx, i);
            let (Some(value), Some(id), Some(path), Some(name)) =
                (bytes(1), bytes(2), bytes(3), bytes(4))
            else {
                return Ok(crc);
            };
            let Some(new_path) = path_key(path) else {
                return Ok(crc);
            };
            Ok(crc.map(|crc| {
                if crc == i64::from(keyed_crc32(&[id, path, name], value)) {
                    i64::from(keyed_crc32(&[id, new_path.as_bytes(), name], value))
                } else {
                    crc
                }
            }))
        },
    )?;
    // `durable_legacy_value(value)`: `value` with the legacy format byte in front. (SQL's
    // `||` would make it text.)
    conn.create_scalar_function(
        "durable_legacy_value",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let value: Vec<u8> = ctx.get(0)?;
            Ok(legacy_value(&value))
        },
    )?;
    // `durable_legacy_crc(value, crc)`: the checksum of `value` once it carries the
    // legacy format byte, if `crc` was its checksum before; otherwise `crc` unchanged,
    // so a damaged value stays damaged (and a NULL, unchecked one stays unchecked).
    conn.create_scalar_function(
        "durable_legacy_crc",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let value: Vec<u8> = ctx.get(0)?;
            let crc: Option<i64> = ctx.get(1)?;
            Ok(crc.map(|crc| {
                if crc == i64::from(crc32(&value)) {
                    i64::from(crc32(&legacy_value(&value)))
                } else {
                    crc
                }
            }))
        },
    )
}

/// The format byte of values written before migration 4 (see `crate::codec`).
const LEGACY_FORMAT: u8 = 1;

fn legacy_value(value: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(value.len() + 1);
    tagged.push(LEGACY_FORMAT);
    tagged.extend_from_slice(value);
    tagged
}

/// The error for a journal whose tables are not the ones durable made, as a statement
/// of durable's found.
fn schema_damaged(path: &Path, e: &rusqlite::Error) -> Error {
    damaged_schema(
        path,
        format!("a statement of durable no longer fits it (SQLite says: {e})"),
    )
}

/// The key in `durable_meta` of the record of durable's schema: one line per table or
/// index whose name starts with `durable_`, its name and the CRC-32 of the SQL text
/// SQLite keeps for it, in name order. Written after a migration, compared at every
/// open.
const SCHEMA_RECORD: &str = "schema";

/// The first schema version whose journals hold [`SCHEMA_RECORD`].
const SCHEMA_RECORDED_SINCE: usize = 7;

/// The record of the schema `conn` holds now (see [`SCHEMA_RECORD`]).
fn schema_record(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_master
             WHERE type IN ('table', 'index') AND name GLOB 'durable_*' ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    let mut record = String::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let sql: Option<String> = row.get(1)?;
        let crc = crc32(sql.unwrap_or_default().as_bytes());
        record.push_str(&format!("{name} {crc:08x}\n"));
    }
    Ok(record)
}

/// Records the schema a migration left (see [`SCHEMA_RECORD`]).
fn record_schema(tx: &Connection, path: &Path) -> Result<(), Error> {
    let err = |e| Error::from(sql_error(path, e));
    let record = schema_record(tx).map_err(err)?;
    tx.execute(
        "INSERT INTO durable_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [SCHEMA_RECORD, record.as_str()],
    )
    .map_err(err)?;
    Ok(())
}

/// Refuses a journal whose schema is not the one its last migration left: a table,
/// index or constraint dropped, added or changed by hand or by damage is found here,
/// at open, in one read, rather than by some statement of some workflow later.
pub(super) fn check_schema(conn: &Connection, path: &Path) -> Result<(), Error> {
    let read = || -> rusqlite::Result<(Option<String>, String)> {
        let stored = conn
            .query_row(
                "SELECT value FROM durable_meta WHERE key = ?1",
                [SCHEMA_RECORD],
                |r| r.get(0),
            )
            .optional()?;
        Ok((stored, schema_record(conn)?))
    };
    let (stored, now) = read().map_err(|e| Error::from(sql_error(path, e)))?;
    let Some(stored) = stored else {
        return Err(damaged_schema(
            path,
            "durable_meta holds no record of the schema durable made".into(),
        ));
    };
    if stored == now {
        return Ok(());
    }
    let parse = |record: &str| -> std::collections::BTreeMap<String, String> {
        record
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, crc)| (name.to_owned(), crc.to_owned()))
            .collect()
    };
    let (stored, now) = (parse(&stored), parse(&now));
    let mut differences = Vec::new();
    for (name, crc) in &stored {
        match now.get(name) {
            None => differences.push(format!("{name} is missing")),
            Some(c) if c != crc => {
                differences.push(format!("the definition of {name} was changed"));
            }
            Some(_) => {}
        }
    }
    for name in now.keys().filter(|n| !stored.contains_key(*n)) {
        differences.push(format!("{name} was added"));
    }
    if differences.is_empty() {
        differences.push("durable_meta's record of the schema is damaged".into());
    }
    Err(damaged_schema(path, differences.join(", ")))
}

/// The error for a journal whose schema differs from the one durable made.
fn damaged_schema(path: &Path, what: String) -> Error {
    StoreError::new(
        path,
        StoreErrorKind::Damaged,
        format!(
            "the journal's schema is damaged: {what}; it was changed outside durable (its \
             tables and indexes are the ones named durable_*): restore the file from a backup"
        ),
    )
    .into()
}

/// A step path as schema 5 wrote it, as schema 6 writes it; `None` if it is not one.
fn path_key(old: &[u8]) -> Option<String> {
    let path: StepPath = std::str::from_utf8(old).ok()?.parse().ok()?;
    Some(path.to_key())
}

/// Argument `i` of a SQL function as the bytes stored, if it is text or a blob.
fn stored_bytes<'a>(ctx: &'a rusqlite::functions::Context<'_>, i: usize) -> Option<&'a [u8]> {
    match ctx.get_raw(i) {
        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE;

    use super::*;

    /// A SQLite set defensive (as `SQLITE_DEFAULT_DEFENSIVE` builds it) ignores
    /// `writable_schema`, which migration 9 needs: the migration turns it off for
    /// itself, makes the journal, and leaves the connection defensive again.
    #[test]
    fn a_defensive_connection_still_makes_a_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let mut conn = Connection::open(&path).expect("open");
        conn.set_db_config(SQLITE_DBCONFIG_DEFENSIVE, true)
            .expect("defensive");
        migrate(&mut conn, &path).expect("migrated");
        assert_eq!(
            schema_version(&conn, &path).expect("version"),
            MIGRATIONS.len()
        );
        check_schema(&conn, &path).expect("the schema it recorded");
        assert!(conn.db_config(SQLITE_DBCONFIG_DEFENSIVE).expect("read"));
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'durable_workflows'",
                [],
                |r| r.get(0),
            )
            .expect("sql");
        assert!(sql.contains("CHECK (status = 'pending' OR "), "{sql}");
    }
}
