-- The PostgreSQL ledger's statements that differ from queries.sql, by name.
--
-- PostgresLedger takes every statement of queries.sql and replaces those named
-- here (same format: `-- name: <name>`, comment lines, one statement; named
-- parameters as `:name`, turned into psycopg's `%(name)s` when loaded). The
-- rest is standard SQL both databases run as written.

-- name: integrity_check
-- PostgreSQL checks its own pages; there is no file of ours to check.
SELECT 'ok';

-- name: start_run
INSERT INTO runs (env, manifest, base_url, started_at, max_usd, concurrency, pid)
VALUES (:env, :manifest, :base_url, :started_at, :max_usd, :concurrency, :pid)
RETURNING id;

-- name: tasks_of_manifest
SELECT * FROM tasks WHERE env = :env AND manifest = :manifest ORDER BY seq;

-- name: tasks_of_env
SELECT * FROM tasks WHERE env = :env ORDER BY seq;

-- name: task_states
SELECT key, status FROM tasks WHERE env = :env AND manifest = :manifest ORDER BY seq;

-- name: rerolls_of_manifest
SELECT * FROM tasks
WHERE env = :env AND manifest = :manifest AND rerolled_from IS NOT NULL ORDER BY seq;

-- name: ensure_task
-- A planned task the ledger does not know yet; a known one is left as it is.
INSERT INTO tasks (
    env, key, manifest, shot, shots, variant, take, model, input, price_class, seconds,
    upper_bound, estimate_local, estimate_source, status, submit_key, created_at, updated_at,
    rerolled_from
) VALUES (
    :env, :key, :manifest, :shot, :shots, :variant, :take, :model, :input, :price_class,
    :seconds, :upper_bound, :estimate_local, :estimate_source, 'planned', :key, :stamp, :stamp,
    :rerolled_from
) ON CONFLICT (env, key) DO NOTHING;

-- name: intent_rows
-- The rows of a step of intents, locked until it commits, in key order (two
-- workers' steps never wait on each other in opposite orders).
SELECT key, manifest, status, attempt, claimed_by, lease_until, estimate_local,
    cost_reserved, cost_estimate, cost_actual, cost_prior,
    (
        SELECT count(*) FROM tasks AS flying
        WHERE flying.env = tasks.env AND flying.manifest = tasks.manifest
            AND flying.status IN ('submitting', 'queued', 'processing')
    ) AS in_flight
FROM tasks
WHERE env = :env AND key IN (SELECT json_array_elements_text(CAST(:keys AS json)))
ORDER BY key FOR UPDATE;

-- name: manifests_of_keys
-- The manifests a step of intents touches, to lock their caps before the rows.
SELECT DISTINCT manifest FROM tasks
WHERE env = :env AND key IN (SELECT json_array_elements_text(CAST(:keys AS json)))
ORDER BY manifest;

-- name: lock_manifest
-- Reservations against one manifest's cap, one at a time across the fleet:
-- held until the step commits (the SQLite ledger's write lock does this there).
SELECT pg_advisory_xact_lock(hashtextextended(:env || '/' || :manifest, 0));

-- name: record_learned_rate
INSERT INTO rates (env, price_class, usd_per_second, learned_at)
VALUES (:env, :price_class, :usd_per_second, :learned_at)
ON CONFLICT (env, price_class) DO UPDATE SET
    usd_per_second = excluded.usd_per_second, learned_at = excluded.learned_at,
    samples = rates.samples + 1;

-- name: latencies
-- The newest :limit_per_class latencies of each class, newest first within a class.
SELECT latency_class, seconds FROM (
    SELECT latency_class, seconds,
        row_number() OVER (PARTITION BY latency_class ORDER BY id DESC) AS n
    FROM latencies WHERE env = :env
) AS recent WHERE n <= :limit_per_class;

-- name: lock_migrations
-- Two workers starting at once apply each migration once.
SELECT pg_advisory_xact_lock(7361626174636801);

-- name: clock
-- The database's clock: every worker's leases are measured on this one.
SELECT extract(epoch FROM clock_timestamp())::float8 AS now;
