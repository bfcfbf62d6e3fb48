"""tracerd._history: the SQLite store of finished sessions, in process, on tmp_path."""

from __future__ import annotations

import logging
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tracerd._errors import BadInput
from tracerd._history import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Entry, History

S = 1_000_000_000  # ns per second
T0 = int(time.time()) * S  # now: default age retention (30 days) keeps these


def entry(
    sid: str, end_s: float = 0, *, owner: str = "alice", rule: str = "", calls: int = 1
) -> Entry:
    end = T0 + int(end_s * S)
    return Entry(
        session_id=sid, owner=owner, rule=rule, state="finished",
        start_unix_ns=end - S, end_unix_ns=end, calls=calls, violations=calls % 3,
        summary=f"summary {sid}".encode(), report=b"\x00\xffreport " + sid.encode(),
    )


def ident(e: Entry) -> Entry:
    return e


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "lib" / "tracerd" / "history.db"


@pytest.fixture
def make(db_path: Path) -> Iterator[Callable[..., History[Entry]]]:
    """Open Histories on db_path (keywords go to History); all closed at the end."""
    opened: list[History[Entry]] = []

    def _make(encode: Callable[[Entry], Entry] = ident, **kw: object) -> History[Entry]:
        h: History[Entry] = History(db_path, encode, **kw)  # type: ignore[arg-type]
        opened.append(h.open())
        return h

    yield _make
    for h in opened:
        h.close()


def ids(entries: list[Entry]) -> list[str]:
    return [e.session_id for e in entries]


def test_put_flush_get_round_trip(make: Callable[..., History[Entry]]) -> None:
    h = make()
    a, b = entry("a", 1), entry("b", 2, owner="bob", rule="ci")
    assert h.put(a) and h.put(b)
    assert h.flush()
    assert h.get("a") == a
    assert h.get("b") == b
    assert h.get("nope") is None
    assert (h.written, h.dropped) == (2, 0)
    # The same id again replaces the row (INSERT OR REPLACE), it does not add one.
    a2 = entry("a", 3, calls=42)
    assert h.put(a2) and h.flush()
    assert h.get("a") == a2
    assert ids(h.list()) == ["a", "b"]


def test_list_filters_and_order(make: Callable[..., History[Entry]]) -> None:
    h = make()
    for e in [
        entry("s1", 10, owner="alice"),
        entry("s2", 30, owner="bob", rule="nightly"),
        entry("s3", 20, owner="alice", rule="nightly"),
        entry("s4", 40, owner="alice"),
        entry("s5", 40, owner="bob"),  # same end as s4: ties go by id, descending
    ]:
        assert h.put(e)
    assert h.flush()
    assert ids(h.list()) == ["s5", "s4", "s2", "s3", "s1"]
    assert ids(h.list(limit=2)) == ["s5", "s4"]
    assert h.list(limit=0) == []
    assert ids(h.list(since_unix_ns=T0 + 20 * S)) == ["s5", "s4", "s2", "s3"]
    assert ids(h.list(since_unix_ns=T0 + 20 * S + 1)) == ["s5", "s4", "s2"]
    assert ids(h.list(owner="alice")) == ["s4", "s3", "s1"]
    assert ids(h.list(owner="carol")) == []
    assert ids(h.list(rule="nightly")) == ["s2", "s3"]
    assert ids(h.list(rule="")) == ["s5", "s4", "s1"]
    assert ids(h.list(owner="alice", rule="nightly", since_unix_ns=T0)) == ["s3"]
    with pytest.raises(ValueError):
        h.list(limit=-1)


def test_persists_across_close_and_reopen(
    db_path: Path, make: Callable[..., History[Entry]]
) -> None:
    h = make()
    stored = [entry(f"p{i}", i, owner=f"o{i % 2}") for i in range(5)]
    for e in stored:
        assert h.put(e)
    h.close()  # close flushes: no explicit flush before it
    h.close()  # idempotent
    assert not h.put(entry("late"))
    with pytest.raises(RuntimeError):
        h.list()

    again = make()
    assert again.get("p3") == stored[3]
    assert ids(again.list()) == ["p4", "p3", "p2", "p1", "p0"]
    assert ids(again.list(owner="o1")) == ["p3", "p1"]


def test_retention_by_count(db_path: Path, make: Callable[..., History[Entry]]) -> None:
    h = make(max_count=3, prune_every=1)
    for i in (5, 1, 4, 2, 6, 3):
        assert h.put(entry(f"c{i}", i))
    assert h.flush()
    assert h.written == 6
    assert ids(h.list()) == ["c6", "c5", "c4"]  # the newest by end time, not by insertion
    h.close()

    # Retention also runs at open, with the limits of the new object.
    ids_after = ids(make(max_count=1).list())
    assert ids_after == ["c6"]


def test_retention_is_not_run_on_every_insert(make: Callable[..., History[Entry]]) -> None:
    h = make(max_count=1, prune_every=5)
    for i in range(4):
        assert h.put(entry(f"n{i}", i)) and h.flush()
    assert len(h.list()) == 4  # 4 writes < prune_every, and well under a minute
    assert h.put(entry("n4", 4)) and h.flush()
    assert ids(h.list()) == ["n4"]


def test_retention_by_age(make: Callable[..., History[Entry]]) -> None:
    now = [T0 / S + 1000]  # wall clock seconds, as time.time() gives them
    h = make(max_age_s=100, max_count=None, prune_every=1, clock=lambda: now[0])
    assert h.put(entry("old", 1000 - 200))
    assert h.put(entry("young", 1000 - 50))
    assert h.put(entry("edge", 1000 - 100))  # exactly max_age old: kept
    assert h.flush()
    assert ids(h.list()) == ["young", "edge"]
    now[0] += 30  # cut-off 930 s: edge (900) goes, young (950) stays
    assert h.put(entry("new", 1030)) and h.flush()
    assert ids(h.list()) == ["new", "young"]


def test_queue_full_drops_without_blocking(make: Callable[..., History[Entry]]) -> None:
    started, release = threading.Event(), threading.Event()

    def blocking(e: Entry) -> Entry:
        if e.session_id == "q0":
            started.set()
            release.wait(5)
        return e

    h = make(blocking, queue_max=2)
    try:
        assert h.put(entry("q0"))
        assert started.wait(2)  # the writer holds q0 in encode; the queue is empty
        assert h.put(entry("q1")) and h.put(entry("q2"))
        # On a thread, so that a put which blocks fails this test instead of hanging it.
        refused: list[bool] = []
        t = threading.Thread(target=lambda: refused.extend(
            [h.put(entry("q3")), h.put(entry("q4"))]))
        t.start()
        t.join(1.0)
        assert not t.is_alive(), "put blocked on a full queue"
        assert refused == [False, False]
        assert h.dropped == 2
        assert not h.flush(timeout_s=0.05)  # the writer is stuck: flush gives up
    finally:
        release.set()
    assert h.flush()
    assert (h.written, h.dropped) == (3, 2)
    assert ids(h.list()) == ["q2", "q1", "q0"]
    assert h.get("q3") is None
    assert h.put(entry("q5")) and h.flush()  # room again
    assert h.written == 4


def test_failing_encode_is_counted_and_writer_carries_on(
    make: Callable[..., History[Entry]], caplog: pytest.LogCaptureFixture
) -> None:
    def flaky(e: Entry) -> Entry:
        if e.session_id.startswith("bad"):
            raise ValueError("cannot serialise")
        if e.session_id == "wrong":
            return "not an entry"  # type: ignore[return-value]
        return e

    h = make(flaky)
    with caplog.at_level(logging.ERROR, logger="tracerd"):
        for sid in ("g1", "bad1", "g2", "wrong"):
            assert h.put(entry(sid))
        assert h.flush()
        assert h.put(entry("g3")) and h.put(entry("bad2"))
        assert h.flush()
    assert (h.written, h.dropped) == (3, 3)
    assert sorted(ids(h.list())) == ["g1", "g2", "g3"]
    messages = [r.getMessage() for r in caplog.records if r.name == "tracerd"]
    assert sum("cannot encode" in m for m in messages) == 3


def test_failed_write_is_counted(make: Callable[..., History[Entry]]) -> None:
    h = make()
    # A value SQLite cannot bind makes the whole batch fail; the next batch still works.
    bad = Entry("x", "o", "", "finished", 0, 0, 0, 0, b"", object())  # type: ignore[arg-type]
    assert h.put(bad) and h.flush()
    assert (h.written, h.dropped) == (0, 1)
    assert h.put(entry("ok")) and h.flush()
    assert (h.written, h.dropped) == (1, 1)
    assert ids(h.list()) == ["ok"]


def test_migrates_a_version_1_database(db_path: Path, make: Callable[..., History[Entry]]) -> None:
    assert SCHEMA_VERSION >= 2  # otherwise this test exercises nothing
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    e = entry("v1", 5, rule="r")
    conn.execute(
        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (e.session_id, e.owner, e.rule, e.state, e.start_unix_ns, e.end_unix_ns, e.calls,
         e.violations, e.summary, e.report),
    )
    conn.commit()
    assert "sessions_rule" not in index_names(conn)
    conn.close()

    h = make()
    assert h.get("v1") == e
    assert ids(h.list(rule="r")) == ["v1"]
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "sessions_rule" in index_names(conn)
    finally:
        conn.close()


def index_names(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {r[0] for r in rows}


def test_fresh_database_layout(db_path: Path, make: Callable[..., History[Entry]]) -> None:
    h = make()
    assert h.put(entry("m")) and h.flush()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists()  # WAL mode
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert {"sessions_end", "sessions_owner", "sessions_rule"} <= index_names(conn)
    finally:
        conn.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(
        "".join(MIGRATIONS) + f"\nPRAGMA user_version = {SCHEMA_VERSION + 1};"
    )
    conn.close()
    h: History[Entry] = History(db_path, ident)
    with pytest.raises(BadInput) as err:
        h.open()
    msg = str(err.value)
    assert "newer" in msg and str(SCHEMA_VERSION + 1) in msg and "\n" not in msg
    h.close()


@pytest.mark.parametrize("kind", ["garbage", "other-sqlite", "directory"])
def test_not_a_history_database_is_refused(db_path: Path, kind: str) -> None:
    db_path.parent.mkdir(parents=True)
    if kind == "garbage":
        db_path.write_bytes(b"this is not a database, it only has a name like one\n" * 200)
    elif kind == "other-sqlite":
        conn = sqlite3.connect(db_path)
        conn.execute("CREATE TABLE accounts (name TEXT)")
        conn.commit()
        conn.close()
    else:
        db_path.mkdir()
    before = None if kind == "directory" else db_path.read_bytes()
    h: History[Entry] = History(db_path, ident)
    with pytest.raises(BadInput) as err:
        h.open()
    assert str(db_path) in str(err.value) and "\n" not in str(err.value)
    if before is not None:
        assert db_path.read_bytes() == before  # left alone
    h.close()


def test_concurrent_puts_while_listing(make: Callable[..., History[Entry]]) -> None:
    h = make()
    errors: list[BaseException] = []
    done = threading.Event()
    listed: list[int] = []

    def producer(n: int) -> None:
        for i in range(50):
            if not h.put(entry(f"t{n}-{i}", i, owner=f"o{n}")):
                errors.append(AssertionError(f"put t{n}-{i} refused"))

    def lister() -> None:
        try:
            while not done.is_set():
                got = h.list(limit=10_000)
                assert ids(got) == ids(sorted(
                    got, key=lambda e: (e.end_unix_ns, e.session_id), reverse=True))
                listed.append(len(got))
                h.get("t0-0")
        except BaseException as exc:
            errors.append(exc)

    listers = [threading.Thread(target=lister) for _ in range(2)]
    producers = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    for t in listers + producers:
        t.start()
    for t in producers:
        t.join()
    assert h.flush()
    done.set()
    for t in listers:
        t.join()
    assert errors == []
    assert listed  # the listers did run
    assert (h.written, h.dropped) == (200, 0)
    assert len(h.list(limit=10_000)) == 200
    assert ids(h.list(owner="o2", limit=3)) == ["t2-49", "t2-48", "t2-47"]


@pytest.mark.parametrize(
    "kw", [{"max_age_s": 0}, {"max_count": 0}, {"queue_max": 0}, {"prune_every": 0}]
)
def test_bad_limits_are_rejected(db_path: Path, kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        History(db_path, ident, **kw)  # type: ignore[arg-type]
