"""The daemon for real: `tracerd serve` on a Unix socket and TCP+mTLS, real processes,
counts checked exactly as in the foundation tests."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import TRACERD, Daemon, assert_exact_tree, calls, free_port, tracerd
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracerd import syscalls
from tracerd._sessions import SessionOptions, State
from tracerd.client import Client, ClientError, Final, Update
from tracerd.model import Report
from tracerd.render import report_from_dict
from tracerd.v1 import tracerd_pb2 as pb
from tracerd.v1 import tracerd_pb2_grpc as pb_grpc

NAME = syscalls.table_for().number
ADMIN_TOKEN = "admin-secret-1"
NOBODY_TOKEN = "nobody-secret-2"
NOBODY = 65534


# ---------------------------------------------------------------------- certificates


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          san_ip: str | None = None, expired: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    if expired:  # valid for a day, a week ago
        now -= datetime.timedelta(days=8)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san_ip:
        import ipaddress  # noqa: PLC0415

        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_pair(d: Path, stem: str, cert: x509.Certificate,
                key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    c, k = d / f"{stem}.pem", d / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return str(c), str(k)


def make_pki(d: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all made here."""
    ca_key = _key()
    ca = _cert("tracerd-test-ca", ca_key, None, ca_key, ca=True)
    out = {"ca": _write_pair(d, "ca", ca, ca_key)[0]}
    skey, ckey = _key(), _key()
    out["server_cert"], out["server_key"] = _write_pair(
        d, "server", _cert("tracerd-server", skey, ca.subject, ca_key, san_ip="127.0.0.1"), skey)
    out["client_cert"], out["client_key"] = _write_pair(
        d, "client", _cert("ci-runner", ckey, ca.subject, ca_key), ckey)
    # Refused ones: expired (right CA), and one from a CA the daemon does not trust.
    out["expired_cert"], out["expired_key"] = _write_pair(
        d, "expired", _cert("ci-runner", ckey, ca.subject, ca_key, expired=True), ckey)
    other_key = _key()
    other = _cert("some-other-ca", other_key, None, other_key, ca=True)
    out["foreign_cert"], out["foreign_key"] = _write_pair(
        d, "foreign", _cert("ci-runner", ckey, other.subject, other_key), ckey)
    return out


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = tmp_path_factory.mktemp("daemon")
    pki = make_pki(d)
    tokens = d / "tokens.toml"
    tokens.write_text(
        f'[[token]]\nname = "admin"\nsecret = "{ADMIN_TOKEN}"\nadmin = true\nexec_rules = true\n'
        f'[[token]]\nname = "nobody"\nsecret = "{NOBODY_TOKEN}"\nuids = [{NOBODY}]\n'
        'max_sessions = 2\n')
    tokens.chmod(0o600)
    port = free_port()
    dm = Daemon(d, "--listen", f"127.0.0.1:{port}", "--tls-cert", pki["server_cert"],
                "--tls-key", pki["server_key"], "--tls-client-ca", pki["ca"],
                "--tokens", str(tokens), "--max-watchers", "8")
    dm.tcp = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    dm.pki = pki  # type: ignore[attr-defined]
    try:
        yield dm.wait_ready()
    finally:
        dm.stop()


class Gated:
    """``exact gated N T``: reports its pid, then waits for a byte before working."""

    def __init__(self, fixture_bin: Path, n: int, threads: int, **kw: Any) -> None:
        self.proc = subprocess.Popen([str(fixture_bin), "gated", str(n), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     **kw)
        assert self.proc.stdout is not None
        role, pid = self.proc.stdout.readline().split()
        assert role == "ready"
        self.pid = int(pid)

    def go(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("x")
        self.proc.stdin.close()
        return self.proc.wait(60)


def final_report(c: Client, sid: str, timeout: float = 60) -> tuple[Any, Report]:
    """Wait for the session to end (through Watch) and return (summary, report)."""
    result: list[Final] = []

    def watch() -> None:
        result.extend(ev for ev in c.watch(sid, interval_ms=200) if isinstance(ev, Final))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t.join(timeout)
    assert result, f"session {sid} did not end within {timeout}s"
    return result[0].session, result[0].report


def wait_exited(c: Client, sid: str, n: int, timeout: float = 10) -> None:
    """Until the session's report has ``n`` processes, all exited (the daemon learns of
    exits at its next drain)."""
    deadline = time.monotonic() + timeout
    while True:
        _, live = c.report(sid)
        if len(live.processes) == n and all(p.exit for p in live.processes.values()):
            return
        assert time.monotonic() < deadline, live.processes
        time.sleep(0.1)


def local_report(tmp_path: Path, cmd: list[str]) -> Report:
    """The same program traced from its execve by a local `tracerd run`, for comparison."""
    out = tmp_path / "local.json"
    assert tracerd("run", "--json", "-o", str(out), "--", *cmd).returncode == 0
    return report_from_dict(json.loads(out.read_text()))


# ---------------------------------------------------------------------- tests


def test_pid_with_children_over_unix_socket_is_exact(client: Client, fixture_bin: Path) -> None:
    g = Gated(fixture_bin, 100, 2)
    s = client.start_pid(g.pid, children=True, options=SessionOptions(per_process=True))
    assert s.state == State.RUNNING
    assert g.go() == 0
    summary, report = final_report(client, s.id)
    assert summary.state == State.FINISHED and summary.end_reason == "all processes exited"
    assert_exact_tree(report, 100, 2)
    assert len(report.processes) == 3
    codes = sorted(p.exit.code for p in report.processes.values() if p.exit)
    assert codes == [0, 0, 3]  # the grandchild exits 3
    root = report.processes[g.pid]
    assert root.uid == 0 and root.comm == "exact" and root.argv[1] == "gated"
    assert report.interrupted is None


def test_pid_without_children_counts_only_the_process(client: Client, fixture_bin: Path) -> None:
    g = Gated(fixture_bin, 50, 0)
    s = client.start_pid(g.pid, options=SessionOptions(per_process=True))
    assert g.go() == 0
    _, report = final_report(client, s.id)
    assert list(report.processes) == [g.pid]
    assert calls(report, "getppid") == (50, 0)  # the parent's own; children untraced
    assert calls(report, "getsid") == (0, 0)


def test_overlapping_sessions_see_exactly_their_windows(client: Client,
                                                        fixture_bin: Path) -> None:
    p = subprocess.Popen([str(fixture_bin), "phases"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdin and p.stdout

    def phase(k: int) -> None:
        assert p.stdin and p.stdout
        p.stdin.write(f"{k}\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == f"done {k}"

    try:
        phase(5)  # before any session
        a = client.start_pid(p.pid)
        phase(10)
        b = client.start_pid(p.pid)
        phase(20)
        client.stop(a.id)
        phase(40)
        _, rep_b_live = client.report(b.id)
        client.stop(b.id)
        phase(80)  # after both
        _, rep_a = client.report(a.id)
        _, rep_b = client.report(b.id)
    finally:
        p.stdin.close()
        p.wait(10)
    assert calls(rep_a, "getppid") == (30, 0)
    assert calls(rep_b_live, "getppid") == (60, 0)
    assert calls(rep_b, "getppid") == (60, 0)
    # Stopping A left B running and untouched; both kept their reports.
    assert {s.id: s.state for s in client.list()}[a.id] == State.FINISHED


def test_exec_rule_catches_a_later_exec_from_its_first_syscall(
        client: Client, fixture_bin: Path, tmp_path: Path) -> None:
    comm = f"rule{os.getpid() % 100000}"
    exe = tmp_path / comm
    shutil.copy(fixture_bin, exe)
    s = client.start_exec_rule(comm=comm, options=SessionOptions(per_process=True))
    try:
        assert subprocess.run([str(exe), "exact", "20", "0"], capture_output=True,
                              timeout=60, check=False).returncode == 0
        wait_exited(client, s.id, 3)
    finally:
        client.stop(s.id)
    _, report = client.report(s.id)
    local = local_report(tmp_path, [str(exe), "exact", "20", "0"])
    got, want = _sum_calls(report), _sum_calls(local)
    execve = NAME("execve")
    assert execve is not None
    want[execve] -= 1  # the rule matched inside that execve: it is not counted
    want = {nr: n for nr, n in want.items() if n}
    assert got == want


@pytest.mark.parametrize("how", ["exec", "fork+exec"])
def test_exec_rule_is_exact_for_processes_already_tracked(
        client: Client, fixture_bin: Path, tmp_path: Path, how: str) -> None:
    """A shell another session tracks (without children) execs, or forks a child that
    execs, the rule's program: the rule's session counts exactly the calls from that
    exec on (the kernel keeps each exec generation's counters apart), nothing before."""
    comm = f"gen{os.getpid() % 100000}{how[0]}"
    exe = tmp_path / comm
    shutil.copy(fixture_bin, exe)
    script = f"read x; {'exec ' if how == 'exec' else ''}{exe} exact 15 0"
    sh = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, text=True)
    assert sh.stdin is not None
    other = client.start_pid(sh.pid)  # tracks the shell, not its children
    rule = client.start_exec_rule(comm=comm, options=SessionOptions(per_process=True))
    try:
        time.sleep(0.3)  # let both sessions' first drains pass: no timing luck involved
        sh.stdin.write("go\n")
        sh.stdin.close()
        assert sh.wait(60) == 0
        wait_exited(client, rule.id, 3)
    finally:
        client.stop(rule.id)
        client.stop(other.id)
    _, report = client.report(rule.id)
    local = local_report(tmp_path, [str(exe), "exact", "15", "0"])
    # The execve itself was in flight while tracked: it belongs to the new generation,
    # as it does to `tracerd run`.
    assert _sum_calls(report) == _sum_calls(local)


def test_cgroup_target_members_and_later_execs(client: Client, fixture_bin: Path,
                                               cgroup_dir: Path) -> None:
    g = Gated(fixture_bin, 10, 0)
    (cgroup_dir / "cgroup.procs").write_text(str(g.pid))
    from tracerd import _procfs  # noqa: PLC0415

    root = _procfs.cgroup2_root()
    assert root is not None
    s = client.start_cgroup(str(cgroup_dir.relative_to(root)),
                            options=SessionOptions(per_process=True))
    try:
        # A member already there: counted from the start, with its descendants.
        assert g.go() == 0
        # A process that joins the cgroup and then execs: caught at its exec.
        procs = str(cgroup_dir / "cgroup.procs")
        later = subprocess.run(
            [str(fixture_bin), "exact", "7", "0"], check=False, capture_output=True,
            preexec_fn=lambda: Path(procs).write_text(str(os.getpid())))
        assert later.returncode == 0
        wait_exited(client, s.id, 6)
    finally:
        client.stop(s.id)
    _, report = client.report(s.id)
    assert calls(report, "getppid") == (6 * 10 + 6 * 7, 0)
    assert calls(report, "umask") == (10 + 7, 0)
    assert all(p.cgroup == "/" + cgroup_dir.name for p in report.processes.values())


def _sum_calls(report: Report) -> dict[int, int]:
    return {nr: st.calls for nr, st in report.totals().items()}


def test_cli_start_watch_list_report(daemon: Daemon, fixture_bin: Path) -> None:
    g = Gated(fixture_bin, 30, 0)
    started = daemon.cli("start", "--pid", str(g.pid), "--children", "--label", "cli")
    assert started.returncode == 0, started.stderr
    sid = started.stdout.strip()
    watcher = subprocess.Popen(
        [*TRACERD, "sessions", "watch", sid, "--interval", "100", "--json",
         "--remote", daemon.socket], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert g.go() == 0
    out, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[-1]["final"]["report"]["totals"]["calls"] > 0
    final = {s["name"]: s["calls"] for s in lines[-1]["final"]["report"]["totals"]["syscalls"]}
    assert final["getppid"] == 180 and final["umask"] == 30
    updates = [x["update"] for x in lines if "update" in x]
    assert [u["seq"] for u in updates] == list(range(1, len(updates) + 1))
    listed = daemon.cli("list", "--state", "finished")
    assert sid in listed.stdout and "cli" in listed.stdout
    rep = daemon.cli("report", sid)
    assert rep.returncode == 0 and "getppid" in rep.stdout and "total" in rep.stdout
    missing = daemon.cli("report", "nosuchsession")
    assert missing.returncode == 67 and "no session" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_run_remote_matches_local_run(daemon: Daemon, fixture_bin: Path, tmp_path: Path) -> None:
    remote, local = tmp_path / "remote.json", tmp_path / "local.json"
    r = tracerd("run", "--remote", daemon.socket, "--json", "-o", str(remote), "--",
                str(fixture_bin), "exact", "40", "2")
    assert r.returncode == 0, r.stderr
    assert tracerd("run", "--json", "-o", str(local), "--", str(fixture_bin), "exact", "40",
                   "2").returncode == 0
    a, b = json.loads(remote.read_text()), json.loads(local.read_text())
    names = ("getppid", "getpgid", "getsid", "umask", "sched_yield", "exit_group", "execve")
    pick = [{s["name"]: (s["calls"], s["errors"]) for s in x["totals"]["syscalls"]
             if s["name"] in names} for x in (a, b)]
    assert pick[0] == pick[1]
    assert a["exit"]["status"] == 0 and len(a["processes"]) == 3
    # CMD's own status comes back, as with a local run.
    failing = tracerd("run", "--remote", daemon.socket, "--", "sh", "-c", "exit 7")
    assert failing.returncode == 7, failing.stderr
    missing = tracerd("run", "--remote", daemon.socket, "--", "/no/such/cmd")
    assert missing.returncode == 127
    # Golden traces work through the daemon too: save one run, then check against it.
    gold = tmp_path / "exact.golden.json"
    cmd = ["--", str(fixture_bin), "exact", "40", "0"]
    saved = tracerd("run", "--remote", daemon.socket, "--save-golden", str(gold), *cmd)
    assert saved.returncode == 0 and gold.exists(), saved.stderr
    again = tracerd("run", "--remote", daemon.socket, "--against", str(gold), *cmd)
    assert again.returncode == 0, again.stderr
    more = tracerd("run", "--remote", daemon.socket, "--against", str(gold), "--",
                   str(fixture_bin), "exact", "80", "0")
    assert more.returncode == 3, more.stderr  # twice the calls: a regression


def test_mtls_tcp_session_is_exact(daemon: Daemon, fixture_bin: Path) -> None:
    pki: dict[str, str] = daemon.pki  # type: ignore[attr-defined]
    g = Gated(fixture_bin, 25, 1)
    with Client(daemon.tcp, token=ADMIN_TOKEN, tls_ca=pki["ca"],  # type: ignore[attr-defined]
                tls_cert=pki["client_cert"], tls_key=pki["client_key"]) as c:
        s = c.start_pid(g.pid, children=True)
        assert g.go() == 0
        _, report = final_report(c, s.id)
    assert_exact_tree(report, 25, 1)
    # Without a client certificate the TLS handshake fails: nothing reaches the API.
    with Client(daemon.tcp, token=ADMIN_TOKEN, tls_ca=pki["ca"],  # type: ignore[attr-defined]
                timeout=5) as c, pytest.raises(ClientError) as e:
        c.info()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # An expired client certificate, or one from a CA the daemon does not trust: the
    # handshake fails too, whatever token comes with it.
    for bad in ("expired", "foreign"):
        with Client(daemon.tcp, token=ADMIN_TOKEN, tls_ca=pki["ca"],  # type: ignore[attr-defined]
                    tls_cert=pki[f"{bad}_cert"], tls_key=pki[f"{bad}_key"], timeout=5,
                    retries=0) as c, pytest.raises(ClientError) as e:
            c.info()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE, bad
    # With a certificate but no token, a listener with tokens wants one.
    with Client(daemon.tcp, tls_ca=pki["ca"], tls_cert=pki["client_cert"],  # type: ignore[attr-defined]
                tls_key=pki["client_key"]) as c, pytest.raises(ClientError) as e:
        c.info()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_tokens_and_their_policies(daemon: Daemon) -> None:
    with daemon.client(token="wrong") as c, pytest.raises(ClientError) as e:
        c.list()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and e.value.exit_status == 77
    root_proc = subprocess.Popen(["sleep", "30"])
    nobody_proc = subprocess.Popen(["sleep", "30"], user=NOBODY, group=NOBODY)
    try:
        with daemon.client(token=NOBODY_TOKEN) as c:
            with pytest.raises(ClientError) as e:
                c.start_pid(root_proc.pid)
            assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(ClientError) as e:
                c.start_exec_rule(comm="anything")
            assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
            mine = c.start_pid(nobody_proc.pid)
            assert mine.owner == "nobody"
            # Its own sessions only: the admin's are invisible to it.
            assert {s.id for s in c.list()} == {mine.id}
            second = c.start_pid(nobody_proc.pid)
            with pytest.raises(ClientError) as e:  # max_sessions = 2
                c.start_pid(nobody_proc.pid)
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            c.stop(mine.id)
            c.stop(second.id)
        cli = daemon.cli("list", env={**os.environ, "TRACERD_TOKEN": "wrong"})
        assert cli.returncode == 77 and "unknown token" in cli.stderr
    finally:
        for p in (root_proc, nobody_proc):
            p.kill()
            p.wait()


def test_plaintext_tcp_needs_insecure_and_loopback(tmp_path: Path) -> None:
    port = free_port()
    r = tracerd("serve", "--socket", "", "--listen", f"127.0.0.1:{port}", timeout=60)
    assert r.returncode == 65 and "TCP needs TLS" in r.stderr
    r = tracerd("serve", "--socket", "", "--insecure", "--listen", f"0.0.0.0:{port}", timeout=60)
    assert r.returncode == 65 and "loopback addresses only" in r.stderr


def test_world_writable_socket_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)  # anyone could replace the socket with their own
    r = tracerd("serve", "--socket", str(d / "tracerd.sock"), "--state-dir", "", timeout=60)
    assert r.returncode == 65 and "not world-writable" in r.stderr, r.stderr
    assert not (d / "tracerd.sock").exists()


def test_socket_group_without_cap_chown_is_a_clear_error(tmp_path: Path) -> None:
    # As a hardened service without CAP_CHOWN: one line and 65, not a traceback.
    sock = tmp_path / "run" / "tracerd.sock"
    r = subprocess.run(["setpriv", "--bounding-set=-chown", "--inh-caps=-chown", *TRACERD,
                        "serve", "--socket", str(sock), "--socket-group", "nogroup",
                        "--state-dir", ""], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 65, r.stderr
    assert "needs CAP_CHOWN for --socket-group" in r.stderr and "Traceback" not in r.stderr


def test_slow_watcher_does_not_hold_back_others(daemon: Daemon, fixture_bin: Path) -> None:
    p = subprocess.Popen([str(fixture_bin), "phases"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdin and p.stdout
    # A tiny HTTP/2 window makes the slow client's stream back up at once, so the
    # daemon's side of it really stops being drained.
    slow_opts: list[tuple[str, int | str]] = [("grpc.http2.lookahead_bytes", 1024),
                                              ("grpc.http2.bdp_probe", 0)]
    with daemon.client() as c, daemon.client(options=slow_opts) as slow_c:
        s = c.start_pid(p.pid, options=SessionOptions(per_process=True))
        slow_iter = slow_c.watch(s.id, interval_ms=50, per_process=True)
        first = next(slow_iter)  # subscribed; now it reads nothing for a while
        assert isinstance(first, Update)
        fast: list[Update] = []

        def run_fast() -> None:
            for ev in c.watch(s.id, interval_ms=50):
                if isinstance(ev, Update):
                    fast.append(ev)

        t = threading.Thread(target=run_fast, daemon=True)
        t.start()
        for _ in range(20):
            p.stdin.write("1000\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "done 1000"
            time.sleep(0.1)
        fast_before = len(fast)
        time.sleep(1.0)
        # The fast watcher kept receiving while the slow one read nothing.
        assert len(fast) > fast_before
        assert sum(sum(st.calls for st in u.delta.values()) for u in fast) > 0
        # The slow one is told what it missed, and its totals are still exact.
        rest = []
        for ev in slow_iter:
            if isinstance(ev, Update):
                rest.append(ev)
                if sum(st.calls for st in ev.totals.values()) >= 20000:
                    break
        assert sum(u.missed for u in rest) > 0
        getppid = NAME("getppid")
        assert getppid is not None
        assert rest[-1].totals[getppid].calls == 20000
        info = c.info()
        assert info.watch_updates_missed > 0
        c.stop(s.id)
        t.join(10)  # the fast stream ends with the session's final report
        assert not t.is_alive()
        slow_iter.close()
    p.stdin.close()
    p.wait(10)
    with daemon.client() as c:
        assert c.info().watchers == 0  # both streams ended and freed their slots


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_requests_get_precise_statuses(daemon: Daemon, data: st.DataObject) -> None:
    channel = grpc.insecure_channel(f"unix:{daemon.socket}")
    stub = pb_grpc.TracerStub(channel)
    try:
        kind = data.draw(st.sampled_from(["pid", "exec", "cgroup", "opts", "watch", "id",
                                          "empty"]))
        req: Any
        allowed: set[grpc.StatusCode]
        if kind == "pid":
            pid = data.draw(st.one_of(st.just(0), st.integers(1 << 22, (1 << 32) - 1)))
            req, allowed = (pb.StartSessionRequest(target=pb.Target(pid=pb.PidTarget(pid=pid))),
                            {grpc.StatusCode.INVALID_ARGUMENT})
        elif kind == "exec":
            comm = data.draw(st.text(min_size=16, max_size=40))
            req = pb.StartSessionRequest(target=pb.Target(exec_rule=pb.ExecRule(comm=comm)))
            allowed = {grpc.StatusCode.INVALID_ARGUMENT}
        elif kind == "cgroup":
            path = "tracerd-nonexistent/" + data.draw(st.text(
                st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]),
                max_size=30))
            req = pb.StartSessionRequest(target=pb.Target(cgroup=pb.CgroupTarget(path=path)))
            allowed = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
        elif kind == "opts":
            bad = data.draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_%", min_size=1,
                                    max_size=20).filter(lambda s: not _is_syscall_spec(s)))
            req = pb.StartSessionRequest(target=pb.Target(pid=pb.PidTarget(pid=os.getpid())),
                                         options=pb.SessionOptions(syscalls=[bad]))
            allowed = {grpc.StatusCode.INVALID_ARGUMENT}
        elif kind == "watch":
            interval = data.draw(st.one_of(st.integers(0, 49),
                                           st.integers(3_600_001, (1 << 32) - 1)))
            req = pb.WatchRequest(session_id="x", interval_ms=interval)
            allowed = {grpc.StatusCode.INVALID_ARGUMENT}
        elif kind == "id":
            sid = data.draw(st.text(max_size=64))
            req, allowed = pb.GetReportRequest(session_id=sid), {grpc.StatusCode.NOT_FOUND}
        else:
            req, allowed = pb.StartSessionRequest(), {grpc.StatusCode.INVALID_ARGUMENT}
        with pytest.raises(grpc.RpcError) as e:
            if isinstance(req, pb.WatchRequest):
                list(stub.Watch(req, timeout=10))
            elif isinstance(req, pb.GetReportRequest):
                stub.GetReport(req, timeout=10)
            else:
                stub.StartSession(req, timeout=10)
        err: Any = e.value
        assert err.code() in allowed, (kind, err.code(), err.details())
        assert err.details()  # a message saying which field and why
        # ... and the daemon keeps serving.
        assert stub.GetInfo(pb.GetInfoRequest(), timeout=10).version
    finally:
        channel.close()


def _is_syscall_spec(s: str) -> bool:
    try:
        syscalls.resolve([s])
    except ValueError:
        return False
    return True


def test_health_reflection_and_info(daemon: Daemon, client: Client) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "tracerd.v1.Tracer"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"tracerd.v1.Tracer", "grpc.health.v1.Health"} <= names
    info = client.info()
    assert info.arch == os.uname().machine and info.kernel == os.uname().release
    assert "ringbuf" in info.bpf_features
    assert info.limits.max_watchers == 8 and info.limits.pid_max > 0
    assert info.limits.min_interval_ms == 50


def test_sigterm_finishes_sessions_with_an_interrupted_report(tmp_path: Path) -> None:
    config = tmp_path / "tracerd.toml"
    config.write_text('log_level = "debug"\n[limits]\nmax_sessions = 1\n')
    dm = Daemon(tmp_path, "--config", str(config)).wait_ready()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with dm.client() as c:
            s = c.start_pid(sleeper.pid)
            with pytest.raises(ClientError) as e:  # the config file's limit
                c.start_pid(sleeper.pid)
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            got: list[Any] = []

            def watch() -> None:
                got.extend(c.watch(s.id, interval_ms=100))

            t = threading.Thread(target=watch, daemon=True)
            t.start()
            time.sleep(0.5)
            dm.proc.send_signal(signal.SIGTERM)
            t.join(30)
        assert dm.stop() == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    finals = [ev for ev in got if isinstance(ev, Final)]
    assert len(finals) == 1, got
    assert finals[0].session.state == State.INTERRUPTED
    assert finals[0].report.interrupted == "daemon shutting down"
    assert not Path(dm.socket).exists()
    assert "BPF programs detached" in dm.log()
