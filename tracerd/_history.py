"""The durable store of finished sessions' reports: SQLite, written off the drain thread.

The hub finishes sessions on its drain thread, which must never wait for a disk. So
:meth:`History.put` only puts the finished session (whatever the caller's type ``T`` is)
on a bounded queue and returns at once; when the queue is full the session is counted in
``dropped`` and not stored, the same trade the kernel ring buffer makes. One writer
thread empties the queue: it turns each item into an :class:`Entry` with the ``encode``
function it was given (so serialising protobufs happens off the drain too) and writes
everything that is queued in one transaction, so a burst of sessions costs one commit.

Queries (ListSessions, GetReport, ``tracerd sessions list``) come from gRPC threads while
the writer writes. They use connections of their own, never the writer's: in WAL mode
readers see the last committed state and neither side waits for the other. Idle reader
connections are kept in a small pool so a query does not pay for opening one.

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` lists SQL
scripts, the N-th of which takes a database from version N-1 to N; each runs in a
transaction of its own together with its version bump, so a crash leaves a database at
one version or the next, never half way. ``PRAGMA application_id`` marks the file as
ours, so that pointing tracerd at some other program's SQLite file is refused instead of
adding a table to it; a version newer than this code knows is refused too (a downgraded
daemon must not write rows an older schema does not describe).

Retention (by age of the end time, and by count keeping the newest end times) runs at
open, then after every ``prune_every`` writes or once a minute, never on each insert: a
delete over an index per insert would make every write pay for it.

The reports hold command lines, which can carry secrets: the directory is made 0700 and
the database file 0600 (SQLite gives its -wal and -shm files the mode of the database).
"""

from __future__ import annotations

import builtins
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from ._errors import BadInput

log = logging.getLogger("tracerd")

T = TypeVar("T")

#: "trcd": marks a SQLite file as a tracerd history database.
APPLICATION_ID = 0x74726364

#: The N-th script takes the schema from version N-1 to N. Append only; never edit one
#: that has shipped (databases in the field have already run it).
MIGRATIONS: tuple[str, ...] = (
    # 1: the table. Indexes serve the two common queries, "newest first" and "newest
    # first of one owner" (every non-admin ListSessions filters on the owner).
    f"""
    CREATE TABLE sessions (
        session_id    TEXT PRIMARY KEY NOT NULL,
        owner         TEXT NOT NULL,
        rule          TEXT NOT NULL,
        state         TEXT NOT NULL,
        start_unix_ns INTEGER NOT NULL,
        end_unix_ns   INTEGER NOT NULL,
        calls         INTEGER NOT NULL,
        violations    INTEGER NOT NULL,
        summary       BLOB NOT NULL,
        report        BLOB NOT NULL
    );
    CREATE INDEX sessions_end ON sessions (end_unix_ns);
    CREATE INDEX sessions_owner ON sessions (owner, end_unix_ns);
    PRAGMA application_id = {APPLICATION_ID};
    """,
    # 2: listing one watch rule's sessions, newest first.
    """
    CREATE INDEX sessions_rule ON sessions (rule, end_unix_ns);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

#: The most items the writer puts in one transaction; bounds how long a commit holds the
#: write lock and how much is lost to a failed write.
_BATCH_MAX = 1000
#: Retention runs at least this often (seconds) while the daemon runs, even when idle,
#: so age-based retention does not wait for new sessions.
_PRUNE_INTERVAL_S = 60.0
#: Idle reader connections kept for reuse.
_READERS_MAX = 4
#: How long a statement waits for another connection's lock (another process writing, a
#: checkpoint) before it fails.
_BUSY_TIMEOUT_S = 5.0

_COLUMNS = (
    "session_id, owner, rule, state, start_unix_ns, end_unix_ns, calls, violations,"
    " summary, report"
)
#: The same, with an empty blob in place of the report (listing needs no reports).
_SUMMARY_COLUMNS = _COLUMNS.removesuffix("report") + "x''"


@dataclass(frozen=True)
class Entry:
    """One finished session as stored; the two protobuf blobs are opaque here."""

    session_id: str
    owner: str  #: token name that owns it (access control filters on it)
    rule: str  #: watch rule that started it, "" for client sessions
    state: str  #: "finished" | "interrupted"
    start_unix_ns: int
    end_unix_ns: int
    calls: int
    violations: int  #: failed budget assertions
    summary: bytes  #: serialized tracerd.v1.SessionSummary
    report: bytes  #: serialized tracerd.v1.Report


class _Stop:
    """The writer's end-of-queue marker (a class, so it cannot be mistaken for a ``T``)."""


_STOP = _Stop()


class History(Generic[T]):
    """The history database at ``path``: :meth:`put` from the drain, queries from anywhere."""

    def __init__(
        self,
        path: str | Path,
        encode: Callable[[T], Entry],
        *,
        max_age_s: float | None = 30 * 86400,
        max_count: int | None = 100_000,
        queue_max: int = 10_000,
        clock: Callable[[], float] = time.time,
        prune_every: int = 100,
    ) -> None:
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive or None, not {max_age_s}")
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be at least 1 or None, not {max_count}")
        if queue_max < 1:
            raise ValueError(f"queue_max must be at least 1, not {queue_max}")
        if prune_every < 1:
            raise ValueError(f"prune_every must be at least 1, not {prune_every}")
        self.path = Path(path)
        self._encode = encode
        self._max_age_s = max_age_s
        self._max_count = max_count
        self._clock = clock  #: wall clock for the age cut-off (end times are wall clock)
        self._prune_every = prune_every
        self._queue: queue.Queue[T | _Stop] = queue.Queue(maxsize=queue_max)
        self.dropped = 0  #: items not stored: queue full, encode failed, or write failed
        self.written = 0  #: items stored
        # _cond guards the counters (put runs on several threads, the writer on its own)
        # and lets flush wait for the writer to catch up.
        self._cond = threading.Condition()
        self._enqueued = 0  #: items accepted by put
        self._done = 0  #: accepted items the writer has finished with (stored or dropped)
        self._writer_db: sqlite3.Connection | None = None
        self._writer: threading.Thread | None = None
        self._readers: builtins.list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._since_prune = 0
        self._last_prune = time.monotonic()

    # -- life cycle -------------------------------------------------------------------

    def open(self) -> History[T]:
        """Open (creating if needed) and migrate the database, and start the writer.

        Raises :class:`BadInput` with a one-line message when the file cannot be opened,
        is not a tracerd history database or has a schema newer than this code knows.
        """
        if self._writer is not None or self._closed:
            raise RuntimeError("History.open: already opened or closed")
        self._create_file()
        db = self._connect()
        try:
            self._check_and_migrate(db)
            # WAL: readers never wait for the writer and the writer never waits for them.
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("history %s: journal mode is %s, not wal", self.path, mode)
            # NORMAL is safe with WAL: the database cannot be corrupted by a crash or a
            # power cut, at worst the last transactions before the power cut are lost.
            # FULL would fsync every commit, which buys nothing worth the disk traffic
            # for a history of reports.
            db.execute("PRAGMA synchronous = NORMAL")
            self._prune(db)
        except sqlite3.Error as exc:
            db.close()
            raise self._bad(f"cannot be opened: {exc}") from exc
        except BaseException:
            db.close()
            raise
        self._writer_db = db
        self._writer = threading.Thread(target=self._run, name="tracerd-history", daemon=True)
        self._writer.start()
        return self

    def close(self) -> None:
        """Write what is queued, stop the writer and close the connections. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True  # put refuses from now on
        writer = self._writer
        if writer is not None:
            if not self.flush():
                log.warning("history %s: closing with writes still pending", self.path)
            try:
                # Room is there unless the writer is stuck: put() refuses once closed.
                self._queue.put(_STOP, timeout=1.0)
            except queue.Full:
                log.warning("history %s: writer does not stop; abandoning it", self.path)
            else:
                writer.join(timeout=5.0)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    def __enter__(self) -> History[T]:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bad(self, why: str) -> BadInput:
        # One line, whatever SQLite's message looked like.
        return BadInput(" ".join(f"history database {self.path}: {why}".split()))

    def _create_file(self) -> None:
        """Create the directory (0700) and an empty database file (0600) if missing.

        SQLite would create the file itself, but with the umask's mode; creating it
        first with O_EXCL and 0600 means it is never readable by others, not even
        between creation and a chmod. SQLite treats an empty file as a new database.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if not self.path.is_file():
                raise self._bad("is not a regular file") from None
            return
        except OSError as exc:
            raise self._bad(f"cannot be created: {exc.strerror or exc}") from exc
        os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; every transaction here is
            # an explicit BEGIN ... COMMIT. check_same_thread=False: the writer's
            # connection is set up in open() and then used only by the writer thread;
            # a reader's moves between gRPC threads through the pool, used by one at a
            # time.
            return sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._bad(f"cannot be opened: {exc}") from exc

    def _check_and_migrate(self, db: sqlite3.Connection) -> None:
        try:
            # The first read of the header is where SQLite notices a file that is not a
            # database ("file is not a database").
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise self._bad(f"is not a tracerd history database ({exc})") from exc
        fresh = app_id == 0 and version == 0 and tables == 0
        if app_id != APPLICATION_ID and not fresh:
            raise self._bad("is not a tracerd history database (another SQLite database)")
        if version > SCHEMA_VERSION:
            raise self._bad(
                f"has schema version {version}, newer than this tracerd knows "
                f"({SCHEMA_VERSION}); use a newer tracerd or another file"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[target - 1]
            try:
                # One script, one transaction, with the version bump inside it.
                db.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;"
                )
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise self._bad(f"migration to schema version {target} failed: {exc}") from exc
            log.info("history %s: schema migrated to version %d", self.path, target)

    # -- writing ----------------------------------------------------------------------

    def put(self, item: T) -> bool:
        """Queue ``item`` for storing; never blocks. False (and counted) when full or closed."""
        # Under _cond, which close() takes to set _closed: an item is either queued
        # before the writer's stop marker or refused, never left behind it unwritten.
        # put_nowait does not block, so neither does holding the lock around it.
        with self._cond:
            if not self._closed:
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    pass
                else:
                    self._enqueued += 1
                    return True
            self.dropped += 1
            return False

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything put so far is stored (or dropped); False on timeout."""
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self._done >= target, timeout=timeout_s)

    def _run(self) -> None:
        """The writer thread: batches of queued items, one transaction each."""
        db = self._writer_db
        assert db is not None
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=_PRUNE_INTERVAL_S)
            except queue.Empty:
                self._prune_quietly(db)
                continue
            batch: builtins.list[T] = []
            item: T | _Stop = first
            while True:
                if isinstance(item, _Stop):
                    stopping = True
                    break
                batch.append(item)
                if len(batch) >= _BATCH_MAX:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(db, batch)
        db.close()

    def _write(self, db: sqlite3.Connection, batch: builtins.list[T]) -> None:
        rows: builtins.list[tuple[object, ...]] = []
        failed = 0
        for item in batch:
            try:
                e = self._encode(item)
                if not isinstance(e, Entry):
                    raise TypeError(f"encode returned {type(e).__name__}, not Entry")
                rows.append((
                    e.session_id, e.owner, e.rule, e.state, e.start_unix_ns, e.end_unix_ns,
                    e.calls, e.violations, e.summary, e.report,
                ))
            except Exception:
                # A bug in encode must cost one session, not the writer thread.
                log.exception("history %s: cannot encode a session; not stored", self.path)
                failed += 1
        stored = 0
        if rows:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    f"INSERT OR REPLACE INTO sessions ({_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
                stored = len(rows)
            except Exception as exc:
                # Disk full, the file removed, another process holding the lock: the
                # batch is lost, the writer carries on with the next one.
                log.error(
                    "history %s: cannot store %d session(s): %s", self.path, len(rows), exc
                )
                failed += len(rows)
                self._rollback(db)
        self._since_prune += stored
        if (
            self._since_prune >= self._prune_every
            or time.monotonic() - self._last_prune >= _PRUNE_INTERVAL_S
        ):
            self._prune_quietly(db)
        # Counted after retention, so that after flush() the store is in its steady
        # state: a query sees the batch with the limits applied.
        with self._cond:
            self.written += stored
            self.dropped += failed
            self._done += len(batch)
            self._cond.notify_all()

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing more to undo; the next BEGIN will say if the connection is dead

    # -- retention --------------------------------------------------------------------

    def _prune(self, db: sqlite3.Connection) -> int:
        """Delete rows past the age limit and beyond the newest max_count; rows deleted."""
        self._since_prune = 0
        self._last_prune = time.monotonic()
        if self._max_age_s is None and self._max_count is None:
            return 0
        deleted = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._max_age_s is not None:
                cutoff_ns = int((self._clock() - self._max_age_s) * 1e9)
                deleted += db.execute(
                    "DELETE FROM sessions WHERE end_unix_ns < ?", (cutoff_ns,)
                ).rowcount
            if self._max_count is not None:
                # Everything after the newest max_count, walking the end-time index.
                deleted += db.execute(
                    "DELETE FROM sessions WHERE session_id IN (SELECT session_id FROM"
                    " sessions ORDER BY end_unix_ns DESC, session_id DESC LIMIT -1 OFFSET ?)",
                    (self._max_count,),
                ).rowcount
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        if deleted:
            log.debug("history %s: retention deleted %d session(s)", self.path, deleted)
        return deleted

    def _prune_quietly(self, db: sqlite3.Connection) -> None:
        try:
            self._prune(db)
        except Exception as exc:
            log.error("history %s: retention failed: %s", self.path, exc)

    # -- queries ----------------------------------------------------------------------

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A connection for one query, from the pool or new; back to the pool after."""
        with self._readers_lock:
            if self._closed:
                raise RuntimeError(f"history {self.path} is closed")
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = self._connect()
            # A reader must never write, whatever a future query looks like.
            conn.execute("PRAGMA query_only = ON")
        try:
            yield conn
        finally:
            with self._readers_lock:
                keep = not self._closed and len(self._readers) < _READERS_MAX
                if keep:
                    self._readers.append(conn)
            if not keep:
                conn.close()

    def list(
        self,
        *,
        since_unix_ns: int | None = None,
        owner: str | None = None,
        rule: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        reports: bool = True,
    ) -> builtins.list[Entry]:
        """Sessions newest first by end time (ties by id), at most ``limit``.

        ``since_unix_ns`` keeps those that ended at or after it; ``owner``, ``rule`` and
        ``state`` keep those with exactly that value (None: any). ``reports=False``
        leaves each entry's report empty: listing needs only the summaries, and the
        reports are most of the bytes.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        given = [(clause, value) for clause, value in (
            ("end_unix_ns >= ?", since_unix_ns), ("owner = ?", owner), ("rule = ?", rule),
            ("state = ?", state)) if value is not None]
        where = [clause for clause, _ in given]
        args: builtins.list[object] = [value for _, value in given]
        columns = _COLUMNS if reports else _SUMMARY_COLUMNS
        sql = f"SELECT {columns} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY end_unix_ns DESC, session_id DESC LIMIT ?"
        args.append(limit)
        with self._reader() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [Entry(*row) for row in rows]

    def get(self, session_id: str) -> Entry | None:
        """The stored session ``session_id``, or None."""
        with self._reader() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return None if row is None else Entry(*row)
