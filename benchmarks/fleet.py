"""A fleet of `mvbatch run` workers on one PostgreSQL ledger, against one process on SQLite.

Run: python benchmarks/fleet.py [--quick]

Every worker is the real CLI (`python -m mvbatch run MANIFEST --yes
--no-download`) in its own process, with its own MVBATCH_STATE_DIR and
MVBATCH_OUTPUT_DIR, as on separate machines; each worker on PostgreSQL also
gets a host name of its own (a UTS namespace, `unshare --uts`, when this runs
as root), so that no worker can tell that another one's process is gone: only
the lease says so, as across machines. Each configuration gets a fresh
`python -m mvbatch.sim` on loopback and a fresh database on one throwaway
PostgreSQL 15 server (tests/pg_server.py: fsync off, on loopback).

1. Zero latency (`--speed 0`), 2,000 distinct tasks (kling-v2-6 std 5 s),
   `--concurrency 16`: one process on SQLite, then 1, 2 and 4 workers on
   PostgreSQL. Makespan (first start to last exit, planning included), tasks
   per second, the workers' CPU (user + system, from `os.wait4`), the
   simulator's, PostgreSQL's (the postmaster and its children) and the rest
   of the machine's, and ledger work per task: transactions (PostgreSQL: the
   database's `xact_commit + xact_rollback`; SQLite: counted in the worker)
   and statements, BEGIN and COMMIT included (counted in each worker by a
   `sitecustomize` this script writes: psycopg's `execute`/`executemany` and
   each transaction's BEGIN and COMMIT, or SQLite's trace callback; for
   PostgreSQL each is a round trip to the server).
2. Realistic latency (`--latency-median 12 --speed 6`: a lognormal around
   2 s), N tasks, `--concurrency 20` on every worker: one process on SQLite,
   2 and 4 workers on PostgreSQL. Makespan against the ideal (as in
   benchmarks/execute.py: a list schedule of the same tasks in the order the
   simulator received them, on 20 slots, with each task's true latency read
   from the simulator's state, zero client overhead, every finish noticed at
   once), GETs per task and the simulator's most tasks alive at once.
3. A worker's death: 3 workers on PostgreSQL, MVBATCH_LEASE_SECONDS=10, at
   realistic latency; once a quarter of the tasks succeeded, the worker
   holding the most tasks in flight is killed (SIGKILL). The delay is from
   the kill to the moment the last task it held was taken over by a survivor
   (their `task.taken_over` log events, or its claim changing in the tasks
   table), against the lease; after 90 s without it the survivors are
   stopped and the stall is reported (exit 1).

Targets (from the issue): the fleet adds at most 10 % to the makespan of the
same work on one machine; a worker's death delays its tasks by at most one
lease (plus one look at the ledger, 5 s). Exits 1 when a run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pg_server import Server, fresh_database, running_server  # noqa: E402
from run_helpers import cli_env  # noqa: E402
from sim_helpers import running_sim  # noqa: E402

from mvbatch.ledger import sqlite_file  # noqa: E402

ENV = "live"  # MINDVIDEO_BASE_URL is set: the ledger's environment is "live"
GET = "GET /api/v1/tasks/{task_id}"
IN_FLIGHT = ("submitting", "queued", "processing")
LOOK = 5.0  # the most a worker waits between looks at tasks others hold (fleet.WAIT_AT_MOST)
REALISTIC = {"latency_median": 12, "speed": 6}  # a lognormal around 2 s

# Counts each worker's ledger statements and transactions, written at exit.
SITECUSTOMIZE = """
import atexit
import json
import os

_OUT = os.environ.get("FLEET_BENCH_COUNTS")
if _OUT:
    _counts = {"statements": 0, "transactions": 0}

    def _save():
        with open(_OUT, "w") as sink:
            json.dump(_counts, sink)

    atexit.register(_save)

    import sqlite3

    _connect = sqlite3.connect

    def _counted_connect(*args, **kwargs):
        conn = _connect(*args, **kwargs)
        state = {"open": False}

        def trace(sql):
            if sql.startswith("--"):  # a trigger's statement, not a call
                return
            _counts["statements"] += 1
            word = (sql.split(None, 1) or [""])[0].upper()
            if word == "BEGIN":
                state["open"] = True
            elif word in ("COMMIT", "END", "ROLLBACK"):
                state["open"] = False
                _counts["transactions"] += 1
            elif not state["open"]:
                _counts["transactions"] += 1  # autocommit: a transaction of its own

        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = _counted_connect

    if os.environ.get("MVBATCH_LEDGER", "").startswith("postgres"):
        import psycopg

        def _counted(method, per_call):
            def wrapper(self, *args, **kwargs):
                _counts["statements"] += per_call
                return method(self, *args, **kwargs)

            return wrapper

        psycopg.Cursor.execute = _counted(psycopg.Cursor.execute, 1)
        psycopg.Cursor.executemany = _counted(psycopg.Cursor.executemany, 1)
        psycopg.Transaction.__enter__ = _counted(psycopg.Transaction.__enter__, 1)  # BEGIN
        psycopg.Transaction.__exit__ = _counted(psycopg.Transaction.__exit__, 1)  # COMMIT
"""


# -- the work


def write_manifest(folder: Path, name: str, tasks: int) -> Path:
    """`tasks` shots of one take each, kling-v2-6 std 5 s, every prompt distinct."""
    lines = [f'name = "{name}"', ""]
    for n in range(tasks):
        lines += [
            "[[shots]]",
            f'id = "shot-{n:05d}"',
            'model = "kling-v2-6"',
            f'prompt = "Fleet benchmark {name}, shot {n}: a car in neon rain"',
            "takes = 1",
            "[shots.input]",
            'mode = "std"',
            "duration = 5",
            'size = "16:9"',
            "",
        ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# -- CPU, from the kernel


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int, children: bool = False) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICK


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def tree_cpu(root: int) -> float:
    """A daemon and its live children, plus the children it has reaped (PostgreSQL)."""
    return process_cpu(root, children=True) + sum(process_cpu(p) for p in children_of(root))


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle, so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


def sim_pid() -> int:
    for pid in children_of(os.getpid()):
        with contextlib.suppress(OSError):
            if b"mvbatch.sim" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise RuntimeError("the simulator process is not a child of this one")


# -- PostgreSQL


@dataclass
class Postgres:
    server: Server
    postmaster: int

    @classmethod
    def of(cls, server: Server) -> Postgres:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            found = conn.execute("SHOW data_directory").fetchone()
        assert found is not None
        pid = int((Path(found[0]) / "postmaster.pid").read_text().split()[0])
        return cls(server, pid)

    def transactions(self, database: str) -> int:
        """Transactions the database committed or rolled back, once the counters settle."""
        last = -1
        for _ in range(20):
            time.sleep(0.5)  # backends flush their counters at exit and every second
            with psycopg.connect(self.server.url(), autocommit=True) as conn:
                found = conn.execute(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                    (database,),
                ).fetchone()
            value = int(found[0]) if found else 0
            if value == last:
                return value
            last = value
        return last

    def cpu(self) -> float:
        return tree_cpu(self.postmaster)


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


# -- workers


@dataclass
class Worker:
    name: str
    folder: Path
    process: subprocess.Popen[bytes]
    started: float
    ended: float | None = None
    code: int | None = None
    cpu: float = 0.0
    ledger_counts: dict[str, int] = field(default_factory=dict)  # from the sitecustomize

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 25) -> str:
        out = (self.folder / "run.out").read_text(errors="replace").splitlines()
        log = self.folder / "state" / "logs" / "mvbatch.jsonl"
        events = log.read_text(errors="replace").splitlines() if log.exists() else []
        return "\n".join(
            [
                f"--- {self.name}: run.out (last {lines} lines)",
                *out[-lines:],
                f"--- {self.name}: mvbatch.jsonl (last {lines} lines)",
                *events[-lines:],
                *(
                    f"--- {self.name}: {crash.name}\n{crash.read_text(errors='replace')[-4000:]}"
                    for crash in sorted((self.folder / "state" / "logs").glob("crash-*"))
                ),
            ]
        )

    def poll(self) -> bool:
        """Whether it has exited (reaped here with `wait4`: its exit time, code and CPU)."""
        if self.code is not None:
            return True
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.ended = time.time()
        self.code = os.waitstatus_to_exitcode(status)
        self.process.returncode = self.code
        self.cpu = usage.ru_utime + usage.ru_stime
        self.read_counts()
        return True

    def read_counts(self) -> None:
        path = self.folder / "counts.json"
        self.ledger_counts = json.loads(path.read_text()) if path.exists() else {}

    def log_events(self, event: str) -> list[dict[str, Any]]:
        log = self.folder / "state" / "logs" / "mvbatch.jsonl"
        found = []
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found


@dataclass
class Setup:
    folder: Path
    site: Path  # the folder of the counting sitecustomize
    own_hosts: bool  # whether each PostgreSQL worker gets a host name of its own


def start_workers(
    setup: Setup,
    where: Path,
    base_url: str,
    manifest: Path,
    *,
    workers: int,
    concurrency: int,
    ledger: str | None,
    extra: dict[str, str] | None = None,
    first: int = 0,
) -> list[Worker]:
    started = []
    for n in range(first, first + workers):
        folder = where / f"machine-{n}"
        folder.mkdir(parents=True)
        env = cli_env(folder, base_url, **(extra or {}))
        env["PYTHONPATH"] = os.pathsep.join([str(setup.site), env["PYTHONPATH"]])
        env["FLEET_BENCH_COUNTS"] = str(folder / "counts.json")
        if ledger is not None:
            env["MVBATCH_LEDGER"] = ledger
        command = [
            sys.executable,
            "-m",
            "mvbatch",
            "run",
            str(manifest),
            "--yes",
            "--no-download",
            "--concurrency",
            str(concurrency),
        ]
        if ledger is not None and setup.own_hosts:
            host = f"machine-{n}"
            # `exec`: the worker keeps the pid Popen knows (its claims name it).
            shell = 'hostname "$0" && exec "$@"'
            command = ["unshare", "--uts", "sh", "-c", shell, host, *command]
        with (folder / "run.out").open("wb") as sink:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=folder,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        started.append(Worker(f"machine-{n}", folder, process, time.time()))
    return started


def wait_workers(workers: list[Worker], timeout: float) -> None:
    """Reap every worker (its exit time, code and CPU from `wait4`); a hang is an error."""
    deadline = time.monotonic() + timeout
    left = [w for w in workers if w.code is None]
    while left:
        left = [w for w in left if not w.poll()]
        if left and time.monotonic() > deadline:
            for worker in left:
                worker.process.send_signal(signal.SIGTERM)
            tails = "\n".join(w.tail() for w in workers)
            raise RuntimeError(f"workers still running after {timeout:.0f} s:\n{tails}")
        if left:
            time.sleep(0.02)


# -- what a run did


@dataclass
class Run:
    label: str
    ledger: str  # "SQLite" or "PostgreSQL"
    workers: list[Worker]
    tasks: int
    concurrency: int
    sim: dict[str, Any]
    latencies: list[float]  # true latencies, in the order the simulator received the tasks
    makespan: float = 0.0
    done: float = 0.0  # first start to the last task's end in the ledger
    transactions: int | None = None
    sim_cpu: float = 0.0
    pg_cpu: float | None = None
    machine_cpu: float = 0.0
    notes: list[str] = field(default_factory=list)

    submitted: list[int] = field(default_factory=list)  # tasks each worker saw succeed

    @property
    def worker_cpu(self) -> float:
        return sum(w.cpu for w in self.workers)

    @property
    def statements(self) -> int:
        return sum(w.ledger_counts.get("statements", 0) for w in self.workers)

    @property
    def sqlite_transactions(self) -> int:
        return sum(w.ledger_counts.get("transactions", 0) for w in self.workers)

    @property
    def gets(self) -> int:
        return int(self.sim["requests"].get(GET, 0))

    @property
    def max_in_flight(self) -> int:
        return int(self.sim["tasks"]["max_in_flight"])

    @property
    def ideal(self) -> float:
        return ideal_makespan(self.latencies, self.concurrency)


def ideal_makespan(latencies: list[float], slots: int) -> float:
    """List scheduling in submission order: each task starts when a slot frees."""
    free = [0.0] * slots
    end = 0.0
    for latency in latencies:
        start = heapq.heappop(free)
        heapq.heappush(free, start + latency)
        end = max(end, start + latency)
    return end


def true_latencies(sim_state: Path, keys: set[str]) -> list[float]:
    with contextlib.closing(sqlite3.connect(sim_state / "sim.sqlite3")) as db:
        rows = db.execute(
            "SELECT idempotency_key, queued_seconds + run_seconds FROM tasks ORDER BY created_at"
        ).fetchall()
    return [float(seconds) for key, seconds in rows if key in keys]


def ledger_tasks(ledger: str | None, folder: Path, manifest: str) -> dict[str, tuple[str, Any]]:
    """Every task of the manifest in the ledger: key -> (status, finished_at)."""
    query = "SELECT key, status, finished_at FROM tasks WHERE env = 'live' AND manifest = "
    if ledger is None:
        with contextlib.closing(sqlite3.connect(sqlite_file(folder / "state"))) as db:
            rows = db.execute(query + "?", (manifest,)).fetchall()
    else:
        with psycopg.connect(ledger) as conn:
            rows = conn.execute(query + "%s", (manifest,)).fetchall()  # type: ignore[arg-type]
    return {key: (status, finished) for key, status, finished in rows}


def ledger_statuses(ledger: str | None, folder: Path, manifest: str) -> dict[str, str]:
    return {k: status for k, (status, _) in ledger_tasks(ledger, folder, manifest).items()}


def last_finish(ledger: str | None, folder: Path, manifest: str) -> float:
    """When the last task of the manifest ended, as the ledger says (seconds since the epoch)."""
    ends = [f for _, f in ledger_tasks(ledger, folder, manifest).values() if f]
    return max(datetime.fromisoformat(f).timestamp() for f in ends)


def check(run: Run, ledger: str | None, manifest: str, expected_codes: dict[str, int]) -> None:
    """Every task succeeded, each charged exactly once, the fleet within --concurrency."""
    problems = []
    for worker in run.workers:
        expected = expected_codes.get(worker.name, 0)
        if worker.code != expected:
            problems.append(f"{worker.name} exited {worker.code} (expected {expected})")
    statuses = ledger_statuses(ledger, run.workers[0].folder, manifest)
    not_done = {k: s for k, s in statuses.items() if s != "succeeded"}
    if len(statuses) != run.tasks or not_done:
        problems.append(f"{len(statuses)} tasks in the ledger, not succeeded: {not_done}")
    charges = {k: v["charges"] for k, v in run.sim["billing"]["by_idempotency_key"].items()}
    if sorted(charges) != sorted(statuses) or set(charges.values()) != {1}:
        twice = {k: n for k, n in charges.items() if n != 1}
        problems.append(f"{len(charges)} keys charged, not exactly once: {twice}")
    if run.max_in_flight > run.concurrency:
        problems.append(f"{run.max_in_flight} tasks alive at once > {run.concurrency}")
    if problems:
        tails = "\n".join(w.tail() for w in run.workers)
        raise RuntimeError(f"{run.label}: " + "; ".join(problems) + "\n" + tails)


@contextlib.contextmanager
def simulator(where: Path, **options: object) -> Iterator[tuple[str, Path]]:
    where.mkdir(parents=True, exist_ok=True)
    state = where / "sim-state"
    with running_sim(where, state_dir=state, **options) as base_url:
        yield base_url, state


def run_once(
    setup: Setup,
    label: str,
    pg: Postgres | None,
    workers: int,
    tasks: int,
    concurrency: int,
    sim_options: dict[str, object],
    timeout: float,
) -> Run:
    where = setup.folder / label.replace(" ", "-").replace(",", "")
    name = "fleet"
    manifest = write_manifest(where, name, tasks)
    ledger = fresh_database(pg.server) if pg is not None else None
    with simulator(where, **sim_options) as (base_url, sim_state):
        sim = sim_pid()
        xact0 = pg.transactions(database_of(ledger)) if pg and ledger else None
        sim0, pg0, busy0 = process_cpu(sim), pg.cpu() if pg else 0.0, machine_busy()
        started = start_workers(
            setup,
            where,
            base_url,
            manifest,
            workers=workers,
            concurrency=concurrency,
            ledger=ledger,
        )
        wait_workers(started, timeout)
        busy = machine_busy() - busy0
        sim_cpu = process_cpu(sim) - sim0
        pg_cpu = pg.cpu() - pg0 if pg else None
        stats = httpx.get(f"{base_url}/_sim/stats", timeout=60).json()
        xacts = None
        if pg is not None and ledger is not None and xact0 is not None:
            xacts = pg.transactions(database_of(ledger)) - xact0
        statuses = ledger_statuses(ledger, started[0].folder, name)
        first = min(w.started for w in started)
        run = Run(
            label=label,
            ledger="PostgreSQL" if pg else "SQLite",
            workers=started,
            tasks=tasks,
            concurrency=concurrency,
            sim=stats,
            latencies=true_latencies(sim_state, set(statuses)),
            makespan=max(w.ended or 0.0 for w in started) - first,
            submitted=[len(w.log_events("task.succeeded")) for w in started],
            done=last_finish(ledger, started[0].folder, name) - first,
            transactions=xacts,
            sim_cpu=sim_cpu,
            pg_cpu=pg_cpu,
            machine_cpu=busy,
        )
    check(run, ledger, name, {})
    return run


# -- 3. a worker's death


@dataclass
class Death:
    label: str
    run: Run
    lease: float
    killed_at: float  # seconds after the first start
    held: int  # tasks in flight the victim held when killed
    lease_out: float  # seconds from the kill until the last of its leases ran out
    first_taken: float | None  # seconds from the kill until the first of them was taken over
    last_taken: float | None  # ... and the last; None: not within the wait
    taken_by_log: int  # how many `task.taken_over` events the survivors logged for them
    taken_count: int  # how many of them were taken over at all
    waited: float  # how long after the kill this waited for the take-over
    diagnosis: str = ""  # what the ledger and the survivors showed, when it stalled

    @property
    def stalled(self) -> bool:
        return self.last_taken is None


def held_by(url: str, pid: int) -> list[tuple[str, str, float]]:
    """The victim's tasks in flight: key, worker id and lease end (the database's clock)."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,):
            return []
        found = conn.execute(
            "SELECT key, claimed_by, lease_until FROM tasks WHERE claimed_by LIKE %s "
            "AND status IN ('submitting', 'queued', 'processing')",
            (f"%:{pid}:%",),
        ).fetchall()
    return [(k, w, float(lease)) for k, w, lease in found]


def claims_of(url: str, keys: list[str]) -> dict[str, str | None]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT key, claimed_by FROM tasks WHERE key = ANY(%s)", (keys,)
        ).fetchall()
    return dict(rows)


def ledger_summary(url: str) -> str:
    """Tasks by status and holder, and whether the holder's lease is over."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT status, coalesce(split_part(claimed_by, ':', 1) || ':' || "
            "split_part(claimed_by, ':', 2), '-'), "
            "coalesce(lease_until < extract(epoch FROM clock_timestamp()), false), count(*) "
            "FROM tasks GROUP BY 1, 2, 3 ORDER BY 1, 2"
        ).fetchall()
    return "; ".join(
        f"{n} {status}"
        + ("" if holder == "-" else f" held by {holder}")
        + (" (lease over)" if over else "")
        for status, holder, over, n in rows
    )


def db_clock(url: str) -> float:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert found is not None
    return float(found[0])


def succeeded(url: str) -> int:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,):
            return 0
        found = conn.execute("SELECT count(*) FROM tasks WHERE status = 'succeeded'").fetchone()
    return int(found[0]) if found else 0


def wait_until(condition: Any, timeout: float, what: str, workers: list[Worker]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(w.poll() for w in workers):
            tails = "\n".join(w.tail() for w in workers)
            raise RuntimeError(f"timed out waiting for {what}:\n{tails}")
        time.sleep(0.1)


def death(
    setup: Setup,
    pg: Postgres,
    tasks: int,
    concurrency: int,
    lease: float,
    *,
    patience: float,
) -> Death:
    """Kill one of 3 workers mid-run; how long until the tasks it held are taken over.

    A quarter of the tasks done, the worker holding the most tasks in flight
    is killed (SIGKILL); the other two are watched for `patience` seconds.
    """
    where = setup.folder / "death"
    name = "fleet"
    manifest = write_manifest(where, name, tasks)
    ledger = fresh_database(pg.server)
    extra = {"MVBATCH_LEASE_SECONDS": f"{lease:g}"}
    with simulator(where, **REALISTIC, seed=3) as (base_url, sim_state):
        started = start_workers(
            setup,
            where,
            base_url,
            manifest,
            workers=3,
            extra=extra,
            concurrency=concurrency,
            ledger=ledger,
        )
        wait_until(lambda: succeeded(ledger) >= tasks // 4, 120, "a quarter done", started)
        # The worker that holds the most tasks in flight (the fleet's slots go
        # to whoever frees one: usually one worker holds them all).
        holding = {w.name: len(held_by(ledger, w.pid)) for w in started}
        victim = max(started, key=lambda w: holding[w.name])
        victim.process.send_signal(signal.SIGKILL)
        killed = time.time()
        clock = db_clock(ledger)  # the leases are on the database's clock
        held = held_by(ledger, victim.pid)  # what it held when it died (it moves no more)
        keys = [k for k, _, _ in held]
        ids = {w for _, w, _ in held}
        lease_out = max(until for _, _, until in held) - clock
        survivors = [w for w in started if w is not victim]
        taken: dict[str, float] = {}
        deadline = killed + patience
        while len(taken) < len(keys) and time.time() < deadline:
            now = time.time()
            for key, holder in claims_of(ledger, keys).items():
                if key not in taken and holder not in ids:
                    taken[key] = now - killed
            if all(w.poll() for w in survivors):
                break
            time.sleep(0.1)
        waited = time.time() - killed
        diagnosis = ""
        if len(taken) < len(keys):  # a finding: say what the fleet was doing, then stop it
            diagnosis = (
                f"after {waited:.0f} s, {len(keys) - len(taken)} of the {len(keys)} tasks "
                f"were still held by the dead worker; ledger: {ledger_summary(ledger)}; "
                + "; ".join(
                    f"{w.name}: "
                    + (w.folder / "run.out").read_text(errors="replace").strip().splitlines()[-1]
                    for w in survivors
                )
            )
            for worker in survivors:
                if not worker.poll():
                    worker.process.send_signal(signal.SIGTERM)
        wait_workers(started, 600)
        stats = httpx.get(f"{base_url}/_sim/stats", timeout=60).json()
        statuses = ledger_statuses(ledger, started[0].folder, name)
        first = min(w.started for w in started)
        run = Run(
            label="worker killed",
            ledger="PostgreSQL",
            workers=started,
            tasks=tasks,
            concurrency=concurrency,
            sim=stats,
            latencies=true_latencies(sim_state, set(statuses)),
            makespan=max(w.ended or 0.0 for w in started) - first,
            submitted=[len(w.log_events("task.succeeded")) for w in started],
        )
    if not diagnosis:
        check(run, ledger, name, {victim.name: -signal.SIGKILL})
    # The survivors' own word for when they took each one over (their log's clock).
    logged = {}
    for worker in started:
        for event in worker.log_events("task.taken_over"):
            if event.get("key") in keys:
                at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                logged[event["key"]] = at.timestamp() - killed
    seen = {**taken, **logged}  # the log is exact; the table was looked at every 0.1 s
    complete = len(seen) >= len(keys)
    return Death(
        label=f"mid-run, {holding[victim.name]} of {concurrency} slots held "
        f"({', '.join(str(n) for n in holding.values())} by worker)",
        run=run,
        lease=lease,
        killed_at=killed - first,
        held=len(keys),
        lease_out=lease_out,
        first_taken=min(seen.values()) if seen else None,
        last_taken=max(seen.values()) if complete else None,
        taken_by_log=len(logged),
        taken_count=len(seen),
        waited=waited,
        diagnosis=diagnosis,
    )


# -- the report


def per_task(value: float | None, tasks: int, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value / tasks:.{digits}f}"


def zero_row(run: Run, base: Run) -> str:
    rest = run.machine_cpu - run.worker_cpu - run.sim_cpu - (run.pg_cpu or 0.0)
    if run.ledger == "PostgreSQL":
        transactions = per_task(run.transactions, run.tasks)
    else:
        transactions = per_task(run.sqlite_transactions, run.tasks)
    return (
        f"| {run.label} | {run.done:.1f} s | {run.makespan:.1f} s "
        f"| **{run.tasks / run.makespan:,.0f}** | {run.makespan / base.makespan:.2f}x "
        f"| {run.worker_cpu:.1f} s ({1000 * run.worker_cpu / run.tasks:.1f} ms/task) "
        f"| {run.sim_cpu:.1f} / {'-' if run.pg_cpu is None else f'{run.pg_cpu:.1f}'} "
        f"/ {max(rest, 0.0):.1f} s "
        f"| {transactions} | {per_task(run.statements, run.tasks)} "
        f"| {run.gets / run.tasks:.2f} | {' / '.join(map(str, run.submitted))} |"
    )


def realistic_row(run: Run, base: Run) -> str:
    return (
        f"| {run.label} | {run.done:.1f} s | {run.makespan:.1f} s | {run.ideal:.1f} s "
        f"| {run.makespan / run.ideal:.3f}x | **{run.makespan / base.makespan:.3f}x** "
        f"({run.done / base.done:.3f}x) "
        f"| {run.gets / run.tasks:.2f} | {run.max_in_flight} "
        f"| {run.worker_cpu:.1f} s ({1000 * run.worker_cpu / run.tasks:.1f} ms/task) "
        f"| {' / '.join(map(str, run.submitted))} |"
    )


def death_row(d: Death) -> str:
    if d.stalled:
        taken = (
            f"**not within {d.waited:.0f} s** ({d.taken_count} "
            f"of {d.held} taken over); the survivors were stopped (SIGTERM)"
        )
    else:
        assert d.first_taken is not None
        assert d.last_taken is not None
        taken = f"first {d.first_taken:.1f} s, **last {d.last_taken:.1f} s**"
    run = d.run
    return (
        f"| {d.label} | {d.killed_at:.1f} s | {d.held} | {d.lease_out:.1f} s | {taken} "
        f"| {run.makespan:.1f} s (ideal {run.ideal:.1f} s) | {run.max_in_flight} |"
    )


def verdict(met: bool | None) -> str:
    if met is None:
        return "(reported)"
    return "**met**" if met else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks, for a quick look")
    args = parser.parse_args()
    zero_tasks, real_tasks, death_tasks = (300, 100, 100) if args.quick else (2000, 400, 300)
    concurrency_zero, concurrency_real, lease = 16, 20, 10.0
    patience = 60.0 if args.quick else 90.0  # after a kill, how long to wait for a take-over

    own_hosts = os.geteuid() == 0 and shutil.which("unshare") is not None
    t0 = time.monotonic()
    tables: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="mvbatch-fleet-") as tmp,
        running_server() as server,
    ):
        folder = Path(tmp)
        site = folder / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        setup = Setup(folder, site, own_hosts)
        pg = Postgres.of(server)

        print(f"1. zero latency: {zero_tasks} tasks, --concurrency {concurrency_zero}", flush=True)
        zero: list[Run] = []
        for label, backend, workers in (
            ("1 process, SQLite", None, 1),
            ("1 worker, PostgreSQL", pg, 1),
            ("2 workers, PostgreSQL", pg, 2),
            ("4 workers, PostgreSQL", pg, 4),
        ):
            run = run_once(
                setup,
                f"zero {label}",
                backend,
                workers,
                zero_tasks,
                concurrency_zero,
                {"speed": 0},
                timeout=600,
            )
            run.label = label
            zero.append(run)
            print(zero_row(run, zero[0]), flush=True)

        print(
            f"2. realistic latency: {real_tasks} tasks, --concurrency {concurrency_real}",
            flush=True,
        )
        real: list[Run] = []
        for label, backend, workers in (
            ("1 process, SQLite", None, 1),
            ("2 workers, PostgreSQL", pg, 2),
            ("4 workers, PostgreSQL", pg, 4),
        ):
            run = run_once(
                setup,
                f"real {label}",
                backend,
                workers,
                real_tasks,
                concurrency_real,
                {**REALISTIC, "seed": 1},
                timeout=600,
            )
            run.label = label
            real.append(run)
            print(realistic_row(run, real[0]), flush=True)

        print(
            f"3. a worker killed: 3 workers, {death_tasks} tasks, --concurrency "
            f"{concurrency_real}, lease {lease:g} s",
            flush=True,
        )
        deaths = []
        for _ in range(1):
            died = death(setup, pg, death_tasks, concurrency_real, lease, patience=patience)
            deaths.append(died)
            print(death_row(died), flush=True)
            if died.diagnosis:
                print(f"   stalled: {died.diagnosis}", flush=True)

    header_zero = (
        "| zero latency | all done | makespan | tasks/s | / 1 process | workers' CPU "
        "| CPU s: sim / PostgreSQL / rest | ledger transactions/task "
        "| ledger statements/task | GETs/task | finished by each worker |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    tables.append(header_zero + "\n" + "\n".join(zero_row(r, zero[0]) for r in zero))
    header_real = (
        "| realistic latency | all done | makespan | ideal | / ideal "
        "| / 1 process (all done) | GETs/task | most alive at once | workers' CPU "
        "| finished by each worker |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    tables.append(header_real + "\n" + "\n".join(realistic_row(r, real[0]) for r in real))
    header_death = (
        f"| worker killed (3 workers, lease {lease:g} s) | killed at | tasks it held "
        "| its last lease ran out | its tasks taken over, after the kill | run "
        "| most alive at once |\n|---|---:|---:|---:|---|---|---:|"
    )
    tables.append(header_death + "\n" + "\n".join(death_row(d) for d in deaths))

    worst_fleet = max(r.makespan / real[0].makespan for r in real[1:])
    worst_done = max(r.done / real[0].done for r in real[1:])
    zero_fleet = max(r.makespan / zero[0].makespan for r in zero[1:])
    runs = [*zero, *real, *(d.run for d in deaths)]
    targets = [
        (
            "realistic latency: fleet makespan / one process",
            f"{worst_fleet:.3f}x (all done: {worst_done:.3f}x), worst of 2 and 4 workers",
            "≤ 1.10",
            worst_fleet <= 1.10,
        ),
        *(
            (
                f"a worker's death ({d.label}): its last task taken over after",
                "never (stalled)" if d.last_taken is None else f"{d.last_taken:.1f} s",
                f"≤ lease + {LOOK:g} s = {lease + LOOK:g} s",
                d.last_taken is not None and d.last_taken <= lease + LOOK,
            )
            for d in deaths
        ),
        (
            "the fleet's --concurrency held (most alive at once, every run)",
            f"{max(r.max_in_flight for r in runs)}",
            f"≤ {concurrency_real}",
            all(r.max_in_flight <= r.concurrency for r in runs),
        ),
        (
            "zero latency: fleet makespan / one process (reported)",
            f"{zero_fleet:.2f}x, worst of 1, 2 and 4 workers",
            "none",
            None,
        ),
    ]
    tables.append(
        "| measure | result | target | |\n|---|---|---|---|\n"
        + "\n".join(f"| {a} | {b} | {c} | {verdict(m)} |" for a, b, c, m in targets)
    )

    print()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"PostgreSQL 15 (fsync off), {date.today().isoformat()}, "
        f"{'own host name per worker' if own_hosts else 'one host name'}, "
        f"{time.monotonic() - t0:.0f} s in all"
    )
    for table in tables:
        print()
        print(table)
    for d in deaths:
        if d.diagnosis:
            print(f"\nstalled ({d.label}): {d.diagnosis}")
    if any(d.stalled for d in deaths):
        sys.exit(1)


if __name__ == "__main__":
    main()
