-- A ledger written by mvbatch with the migrations applied up to m005_claims
-- (the m004 ledger opened and migrated by the code that added m005, then the
-- task in flight claimed by a worker): a stand-in for the ledgers on users'
-- disks. Never regenerate or edit it: new code must open it.
-- Made with sqlite3's iterdump; `PRAGMA user_version` is not part of a dump and
-- is restored by the last line.
BEGIN TRANSACTION;
CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            run_id INTEGER,
            at TEXT NOT NULL,
            previous TEXT,
            status TEXT NOT NULL,
            detail TEXT
        );
INSERT INTO "events" VALUES(1,'sim','mvb1-done',1,'2026-12-06T23:57:25.400+00:00','planned','submitting','{"submit_key":"mvb1-done","attempt":0}');
INSERT INTO "events" VALUES(2,'sim','mvb1-done',1,'2026-12-06T23:57:25.400+00:00','submitting','queued','{"task_id":"task_1","request_id":"req_1","cost_estimate":"0.0414"}');
INSERT INTO "events" VALUES(3,'sim','mvb1-done',1,'2026-12-06T23:57:25.400+00:00','queued','processing',NULL);
INSERT INTO "events" VALUES(4,'sim','mvb1-done',1,'2026-12-06T23:57:25.400+00:00','processing','succeeded','{"cost_actual":"0.0414","outputs":1}');
INSERT INTO "events" VALUES(5,'sim','mvb1-failed',1,'2026-12-06T23:57:25.400+00:00','planned','submitting','{"submit_key":"mvb1-failed","attempt":0}');
INSERT INTO "events" VALUES(6,'sim','mvb1-failed',1,'2026-12-06T23:57:25.400+00:00','submitting','queued','{"task_id":"task_2","request_id":null,"cost_estimate":"0.0828"}');
INSERT INTO "events" VALUES(7,'sim','mvb1-failed',1,'2026-12-06T23:57:25.400+00:00','queued','failed','{"cost_actual":null,"error":"moderation"}');
INSERT INTO "events" VALUES(8,'sim','mvb1-failed',1,'2026-12-06T23:57:25.400+00:00','failed','submitting','{"submit_key":"mvb1-retry1","attempt":1}');
INSERT INTO "events" VALUES(9,'sim','mvb1-failed',1,'2026-12-06T23:57:25.400+00:00','submitting','queued','{"task_id":"task_3","request_id":"req_3","cost_estimate":"0.0828"}');
INSERT INTO "events" VALUES(10,'sim','mvb1-rejected',1,'2026-12-06T23:57:25.400+00:00','planned','submitting','{"submit_key":"mvb1-rejected","attempt":0}');
INSERT INTO "events" VALUES(11,'sim','mvb1-rejected',1,'2026-12-06T23:57:25.400+00:00','submitting','rejected','{"error":"input.duration: 7 is not one of [5, 10]","http_status":422}');
INSERT INTO "events" VALUES(12,'sim','mvb1-flight',1,'2026-12-06T23:57:25.401+00:00','planned','submitting','{"submit_key":"mvb1-flight","attempt":0}');
INSERT INTO "events" VALUES(13,'sim','mvb1-flight',1,'2026-12-06T23:57:25.401+00:00','submitting','queued','{"task_id":"task_4","request_id":null,"cost_estimate":null}');
INSERT INTO "events" VALUES(14,'sim','mvb1-flight',1,'2026-12-06T23:57:25.401+00:00','queued','processing',NULL);
INSERT INTO "events" VALUES(15,'sim','mvb1-intent',1,'2026-12-06T23:57:25.401+00:00','planned','submitting','{"submit_key":"mvb1-intent","attempt":0}');
CREATE TABLE latencies (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            latency_class TEXT NOT NULL,
            seconds REAL NOT NULL,
            observed_at TEXT NOT NULL
        );
INSERT INTO "latencies" VALUES(1,'sim','kling-v2-6 {"audio":false,"mode":"std"} 5s',42.5,'2026-12-06T23:57:25.400+00:00');
CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, applied_at TEXT NOT NULL);
INSERT INTO "migrations" VALUES(1,'m001_initial','2026-12-06T23:57:25.399+00:00');
INSERT INTO "migrations" VALUES(2,'m002_output_file_stat','2026-12-06T23:57:25.399+00:00');
INSERT INTO "migrations" VALUES(3,'m003_cost_reserved','2026-12-07T00:54:57.963+00:00');
INSERT INTO "migrations" VALUES(4,'m004_review','2026-12-07T02:15:53.116+00:00');
INSERT INTO "migrations" VALUES(5,'m005_claims','2026-12-07T02:23:26.102+00:00');
CREATE TABLE outputs (
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            idx INTEGER NOT NULL,
            url TEXT NOT NULL,
            path TEXT,
            sha256 TEXT,
            bytes INTEGER,
            downloaded_at TEXT, file_stat TEXT, verified_at TEXT,
            PRIMARY KEY (env, key, idx)
        );
INSERT INTO "outputs" VALUES('sim','mvb1-done',0,'https://cdn.test/1.mp4','videos/car/mode-std_take1_mvb1-done.mp4','abababababababababababababababababababababababababababababababab',1234,'2026-12-06T23:57:25.400+00:00','{"ino":1,"size":1234}','2026-12-06T23:57:25.400+00:00');
CREATE TABLE rates (
            env TEXT NOT NULL,
            price_class TEXT NOT NULL,
            usd_per_second TEXT NOT NULL,
            learned_at TEXT NOT NULL,
            samples INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (env, price_class)
        );
INSERT INTO "rates" VALUES('sim','kling-v2-6 {"audio":false,"mode":"pro"}','0.0116','2026-12-06T23:57:25.401+00:00',1);
CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            manifest TEXT NOT NULL,
            base_url TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            outcome TEXT,
            max_usd TEXT,
            concurrency INTEGER,
            pid INTEGER
        );
INSERT INTO "runs" VALUES(1,'sim','demo','http://127.0.0.1:8765/api/v1','2026-12-06T23:57:25.399+00:00','2026-12-06T23:57:25.401+00:00','interrupted','5',16,25418);
CREATE TABLE tasks (
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            manifest TEXT NOT NULL,
            shot TEXT NOT NULL,
            shots TEXT NOT NULL,
            variant TEXT NOT NULL,
            take INTEGER NOT NULL,
            model TEXT NOT NULL,
            input TEXT NOT NULL,
            price_class TEXT NOT NULL,
            seconds TEXT,
            upper_bound INTEGER NOT NULL DEFAULT 0,
            estimate_local TEXT NOT NULL,
            estimate_source TEXT NOT NULL,
            status TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            submit_key TEXT NOT NULL,
            task_id TEXT,
            request_id TEXT,
            cost_estimate TEXT,
            cost_actual TEXT,
            cost_prior TEXT NOT NULL DEFAULT '0',
            error TEXT,
            server_events TEXT,
            submissions INTEGER NOT NULL DEFAULT 0,
            polls INTEGER NOT NULL DEFAULT 0,
            run_id INTEGER REFERENCES runs (id),
            created_at TEXT NOT NULL,
            submitted_at TEXT,
            started_at TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL, cost_reserved TEXT, rerolled_from TEXT, claimed_by TEXT, lease_until REAL,
            PRIMARY KEY (env, key)
        );
INSERT INTO "tasks" VALUES('sim','mvb1-done','demo','car','["car"]','{"mode":"std"}',1,'kling-v2-6','{"prompt":"car at dusk","mode":"std","duration":5}','kling-v2-6 {"audio":false,"mode":"std"}','5',0,'0.0414','documented','succeeded',0,'mvb1-done','task_1','req_1','0.0414','0.0414','0',NULL,NULL,1,3,1,'2026-12-06T23:57:25.399+00:00','2026-12-06T23:57:25.400+00:00','2026-12-06T23:57:25.400+00:00','2026-12-06T23:57:25.400+00:00','2026-12-06T23:57:25.400+00:00',NULL,NULL,NULL,NULL);
INSERT INTO "tasks" VALUES('sim','mvb1-failed','demo','dog','["dog"]','{"mode":"pro"}',1,'kling-v2-6','{"prompt":"dog at dusk","mode":"pro","duration":5}','kling-v2-6 {"audio":false,"mode":"pro"}','5',0,'0.0828','documented','queued',1,'mvb1-retry1','task_3','req_3','0.0828',NULL,'0.0828',NULL,NULL,2,2,1,'2026-12-06T23:57:25.399+00:00','2026-12-06T23:57:25.400+00:00',NULL,NULL,'2026-12-06T23:57:25.400+00:00',NULL,NULL,NULL,NULL);
INSERT INTO "tasks" VALUES('sim','mvb1-rejected','demo','cat','["cat"]','{"mode":"std"}',1,'kling-v2-6','{"prompt":"cat at dusk","mode":"std","duration":5}','kling-v2-6 {"audio":false,"mode":"std"}','5',0,'0.0414','documented','rejected',0,'mvb1-rejected',NULL,NULL,NULL,NULL,'0','input.duration: 7 is not one of [5, 10]',NULL,1,0,1,'2026-12-06T23:57:25.399+00:00',NULL,NULL,'2026-12-06T23:57:25.400+00:00','2026-12-06T23:57:25.400+00:00',NULL,NULL,NULL,NULL);
INSERT INTO "tasks" VALUES('sim','mvb1-flight','demo','owl','["owl"]','{"mode":"std"}',1,'kling-v2-6','{"prompt":"owl at dusk","mode":"std","duration":5}','kling-v2-6 {"audio":false,"mode":"std"}','5',0,'0.0414','documented','processing',0,'mvb1-flight','task_4',NULL,NULL,NULL,'0',NULL,NULL,1,4,1,'2026-12-06T23:57:25.399+00:00','2026-12-06T23:57:25.401+00:00','2026-12-06T23:57:25.401+00:00',NULL,'2026-12-06T23:57:25.401+00:00',NULL,NULL,'host:1:abc',1.79661023610554718967e+09);
INSERT INTO "tasks" VALUES('sim','mvb1-intent','demo','fox','["fox"]','{"mode":"std"}',1,'kling-v2-6','{"prompt":"fox at dusk","mode":"std","duration":5}','kling-v2-6 {"audio":false,"mode":"std"}','5',0,'0.0414','documented','submitting',0,'mvb1-intent',NULL,NULL,NULL,NULL,'0',NULL,NULL,1,0,1,'2026-12-06T23:57:25.399+00:00',NULL,NULL,NULL,'2026-12-06T23:57:25.401+00:00',NULL,NULL,NULL,NULL);
INSERT INTO "tasks" VALUES('sim','mvb1-new','demo','elk','["elk"]','{"mode":"std"}',1,'kling-v2-6','{"prompt":"elk at dusk","mode":"std","duration":5}','kling-v2-6 {"audio":false,"mode":"std"}','5',0,'0.0414','documented','planned',0,'mvb1-new',NULL,NULL,NULL,NULL,'0',NULL,NULL,0,0,NULL,'2026-12-06T23:57:25.399+00:00',NULL,NULL,NULL,'2026-12-06T23:57:25.399+00:00',NULL,NULL,NULL,NULL);
CREATE TABLE verdicts (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            at TEXT NOT NULL,
            verdict TEXT,
            note TEXT
        );
INSERT INTO "verdicts" VALUES(1,'sim','mvb1-done','2026-12-07T02:15:53.118+00:00','approved','the keeper');
INSERT INTO "verdicts" VALUES(2,'sim','mvb1-flight','2026-12-07T02:15:53.119+00:00','rejected',NULL);
CREATE INDEX tasks_manifest ON tasks (env, manifest, status);
CREATE INDEX events_task ON events (env, key);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE INDEX latencies_class ON latencies (env, latency_class);
CREATE INDEX tasks_committed ON tasks (
            env, manifest, status, estimate_local, cost_reserved, cost_estimate,
            cost_actual, cost_prior
        );
CREATE INDEX verdicts_task ON verdicts (env, key, id);
CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
        BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
CREATE TRIGGER verdicts_no_delete BEFORE DELETE ON verdicts
        BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
COMMIT;
PRAGMA user_version = 5;
