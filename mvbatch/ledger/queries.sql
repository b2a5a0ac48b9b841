-- Every statement of the SQLite ledger, by name (loaded once by queries.py).
--
-- A block starts with `-- name: <name>`; the comment lines after it say what
-- the statement does; the statement runs to the next block. Values are named
-- parameters (`:env`), never formatted in. Not here: the connection's pragmas
-- and BEGIN/COMMIT (connection.py, beside their reasons), the schema's DDL
-- (migrations.py: its text is stored in the file and must never change), and
-- `PRAGMA user_version = N`, which takes no parameter.

-- name: applied_migrations
SELECT name FROM migrations ORDER BY id;

-- name: migration_is_applied
SELECT 1 FROM migrations WHERE name = :name;

-- name: record_migration
INSERT INTO migrations (name, applied_at) VALUES (:name, :applied_at);

-- name: count_migrations
SELECT count(*) FROM migrations;

-- name: integrity_check
PRAGMA integrity_check;

-- name: start_run
INSERT INTO runs (env, manifest, base_url, started_at, max_usd, concurrency, pid)
VALUES (:env, :manifest, :base_url, :started_at, :max_usd, :concurrency, :pid);

-- name: finish_run
UPDATE runs SET finished_at = :finished_at, outcome = :outcome WHERE id = :run_id;

-- name: last_run
SELECT * FROM runs WHERE manifest = :manifest ORDER BY id DESC LIMIT 1;

-- name: task
SELECT * FROM tasks WHERE env = :env AND key = :key;

-- name: tasks_of_manifest
SELECT * FROM tasks WHERE env = :env AND manifest = :manifest ORDER BY rowid;

-- name: tasks_of_env
-- Every manifest's tasks on one side (sim or live).
SELECT * FROM tasks WHERE env = :env ORDER BY rowid;

-- name: task_states
-- Each of a manifest's tasks' status alone: what `plan` needs of a large ledger.
SELECT key, status FROM tasks WHERE env = :env AND manifest = :manifest ORDER BY rowid;

-- name: rerolls_of_manifest
-- The re-rolled takes (`run --reroll-rejected`) of a manifest, first planned first.
SELECT * FROM tasks
WHERE env = :env AND manifest = :manifest AND rerolled_from IS NOT NULL ORDER BY rowid;

-- name: events
SELECT at, previous, status, detail, run_id FROM events
WHERE env = :env AND key = :key ORDER BY id;

-- name: append_event
-- The table refuses UPDATE and DELETE (triggers): the log is evidence.
INSERT INTO events (env, key, run_id, at, previous, status, detail)
VALUES (:env, :key, :run_id, :at, :previous, :status, :detail);

-- name: ensure_task
-- A planned task the ledger does not know yet; a known one is left as it is.
INSERT OR IGNORE INTO tasks (
    env, key, manifest, shot, shots, variant, take, model, input, price_class, seconds,
    upper_bound, estimate_local, estimate_source, status, submit_key, created_at, updated_at,
    rerolled_from
) VALUES (
    :env, :key, :manifest, :shot, :shots, :variant, :take, :model, :input, :price_class,
    :seconds, :upper_bound, :estimate_local, :estimate_source, 'planned', :key, :stamp, :stamp,
    :rerolled_from
);

-- name: intent_rows
-- What a step of intents needs of each task's row (`reserve.standing`), with how
-- many of its manifest's tasks are in flight, whichever worker holds them: :keys
-- is a JSON array of keys.
SELECT key, manifest, status, attempt, claimed_by, lease_until, estimate_local,
    cost_reserved, cost_estimate, cost_actual, cost_prior,
    (
        SELECT count(*) FROM tasks AS flying
        WHERE flying.env = tasks.env AND flying.manifest = tasks.manifest
            AND flying.status IN ('submitting', 'queued', 'processing')
    ) AS in_flight
FROM tasks WHERE env = :env AND key IN (SELECT value FROM json_each(:keys));

-- name: forget_attempt
-- A new attempt starts clean: the old one's answer goes, its spend moves to cost_prior.
UPDATE tasks SET
    task_id = NULL, request_id = NULL, cost_estimate = NULL, cost_actual = NULL,
    error = NULL, server_events = NULL, started_at = NULL, finished_at = NULL,
    submitted_at = NULL, cost_prior = :cost_prior
WHERE env = :env AND key = :key;

-- name: forget_outputs
DELETE FROM outputs WHERE env = :env AND key = :key;

-- name: committed_of_manifest
-- What a manifest's tasks stand for against the cap, as groups of tasks with
-- the same figures and how many there are: the sum is `committed_cost` of each
-- group times its count, in decimal, outside SQL (most tasks share their
-- prices, so a run of thousands reads a handful of groups). A planned task
-- stands for nothing: no answer yet, and a prior attempt's cost moves in only
-- with an intent.
SELECT status, estimate_local, cost_reserved, cost_estimate, cost_actual, cost_prior,
    count(*) AS tasks
FROM tasks WHERE env = :env AND manifest = :manifest AND status != 'planned'
GROUP BY status, estimate_local, cost_reserved, cost_estimate, cost_actual, cost_prior;

-- name: record_intent
-- :cost_reserved is what the task is held at against the cap until answered (NULL: estimate_local).
-- :worker holds it until :lease_until (NULL, NULL: a caller that does not claim).
UPDATE tasks SET
    status = 'submitting', submit_key = :submit_key, attempt = :attempt,
    submissions = submissions + 1, cost_reserved = :cost_reserved, run_id = :run_id,
    claimed_by = :worker, lease_until = :lease_until, updated_at = :stamp
WHERE env = :env AND key = :key;

-- name: record_submitted
UPDATE tasks SET
    status = :status, task_id = :task_id, request_id = :request_id,
    cost_estimate = :cost_estimate, submitted_at = coalesce(submitted_at, :stamp),
    updated_at = :stamp
WHERE env = :env AND key = :key;

-- name: record_progress
-- :started_at is the time when the task is now processing, else NULL (kept as it was).
-- :error is the server's words on a task let go in an undocumented status, else NULL
-- (a task seen making progress again has no such words).
UPDATE tasks SET
    status = :status, polls = :polls, started_at = coalesce(started_at, :started_at),
    error = :error, updated_at = :stamp
WHERE env = :env AND key = :key;

-- name: record_finished
-- A task id or request id given here fills in; one already known is kept.
UPDATE tasks SET
    status = :status, task_id = coalesce(:task_id, task_id),
    request_id = coalesce(:request_id, request_id),
    cost_estimate = coalesce(:cost_estimate, cost_estimate), cost_actual = :cost_actual,
    error = :error, polls = :polls, submitted_at = coalesce(submitted_at, :stamp),
    finished_at = :stamp, updated_at = :stamp
WHERE env = :env AND key = :key;

-- name: record_latency
INSERT INTO latencies (env, latency_class, seconds, observed_at)
VALUES (:env, :latency_class, :seconds, :observed_at);

-- name: record_rejected
UPDATE tasks SET status = 'rejected', error = :error, finished_at = :stamp, updated_at = :stamp
WHERE env = :env AND key = :key;

-- name: record_refused_resend
-- Failed, not rejected: the first send may have been charged; our estimate stands.
UPDATE tasks SET
    status = 'failed', error = :error, cost_estimate = coalesce(cost_estimate, :estimate),
    finished_at = :stamp, updated_at = :stamp
WHERE env = :env AND key = :key;

-- name: record_server_events
UPDATE tasks SET server_events = :server_events, updated_at = :stamp
WHERE env = :env AND key = :key;

-- name: record_output_url
-- A new or refreshed URL; a download already recorded for the output is kept.
INSERT INTO outputs (env, key, idx, url) VALUES (:env, :key, :idx, :url)
ON CONFLICT (env, key, idx) DO UPDATE SET url = excluded.url;

-- name: record_download
UPDATE outputs SET
    path = :path, sha256 = :sha256, bytes = :bytes, downloaded_at = :stamp,
    file_stat = :file_stat, verified_at = :stamp
WHERE env = :env AND key = :key AND idx = :idx;

-- name: record_verified
UPDATE outputs SET file_stat = :file_stat, verified_at = :stamp
WHERE env = :env AND key = :key AND idx = :idx;

-- name: outputs
SELECT idx, url, path, sha256, bytes, downloaded_at, file_stat, verified_at FROM outputs
WHERE env = :env AND key = :key ORDER BY idx;

-- name: outputs_of_manifest
-- Every output of a manifest's tasks in one read (a report of 100,000 tasks).
SELECT o.key, o.idx, o.url, o.path, o.sha256, o.bytes, o.downloaded_at, o.file_stat,
    o.verified_at
FROM outputs o JOIN tasks t ON t.env = o.env AND t.key = o.key
WHERE o.env = :env AND t.manifest = :manifest ORDER BY o.key, o.idx;

-- name: undownloaded
-- Keys of a manifest's succeeded tasks with an output not downloaded yet.
SELECT DISTINCT o.key FROM outputs o
JOIN tasks t ON t.env = o.env AND t.key = o.key
WHERE o.env = :env AND t.manifest = :manifest AND t.status = 'succeeded'
    AND o.downloaded_at IS NULL;

-- name: record_learned_rate
INSERT INTO rates (env, price_class, usd_per_second, learned_at)
VALUES (:env, :price_class, :usd_per_second, :learned_at)
ON CONFLICT (env, price_class) DO UPDATE SET
    usd_per_second = excluded.usd_per_second, learned_at = excluded.learned_at,
    samples = samples + 1;

-- name: learned_rates
SELECT price_class, usd_per_second FROM rates WHERE env = :env;

-- name: latencies
-- The newest :limit_per_class latencies of each class, newest first within a class.
SELECT latency_class, seconds FROM (
    SELECT latency_class, seconds,
        row_number() OVER (PARTITION BY latency_class ORDER BY id DESC) AS n
    FROM latencies WHERE env = :env
) WHERE n <= :limit_per_class;

-- name: append_verdict
-- The table refuses UPDATE and DELETE (triggers): the latest row counts.
INSERT INTO verdicts (env, key, at, verdict, note) VALUES (:env, :key, :at, :verdict, :note);

-- name: latest_verdicts
-- Each task's latest verdict, for the tasks of one manifest.
SELECT v.key, v.at, v.verdict, v.note FROM verdicts v
JOIN (
    SELECT verdicts.key, max(verdicts.id) AS id FROM verdicts
    JOIN tasks ON tasks.env = verdicts.env AND tasks.key = verdicts.key
    WHERE verdicts.env = :env AND tasks.manifest = :manifest
    GROUP BY verdicts.key
) latest ON latest.id = v.id;

-- name: verdict_history
SELECT key, at, verdict, note FROM verdicts WHERE env = :env AND key = :key ORDER BY id;

-- name: claim
-- Take a task in flight: free, ours, or its holder's lease is over.
UPDATE tasks SET claimed_by = :worker, lease_until = :lease_until
WHERE env = :env AND key = :key AND status IN ('submitting', 'queued', 'processing')
    AND (claimed_by IS NULL OR claimed_by = :worker OR lease_until <= :now);

-- name: abandoned
-- The manifest's tasks in flight that no live worker holds: none does, or its lease is over.
SELECT * FROM tasks
WHERE env = :env AND manifest = :manifest AND status IN ('submitting', 'queued', 'processing')
    AND (claimed_by IS NULL OR (claimed_by != :worker AND lease_until <= :now));

-- name: renew
-- A worker's heartbeat: every task it holds in flight is held a lease longer.
UPDATE tasks SET lease_until = :lease_until
WHERE env = :env AND claimed_by = :worker AND status IN ('submitting', 'queued', 'processing');

-- name: release
-- A worker that stops lets go of what it holds: others take it at once.
UPDATE tasks SET claimed_by = NULL, lease_until = NULL
WHERE env = :env AND claimed_by = :worker;
