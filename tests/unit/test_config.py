"""Daemon configuration and access tokens (tracerd._config): parsing and validation only.

Every refusal is a BadInput whose message names the file and the key, which is what an
operator needs to fix it; the tests assert on those messages.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from tracerd._config import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_SOCKET,
    LOCAL,
    DaemonConfig,
    Token,
    check_transport,
    digest,
    load_config,
    load_tokens,
    match_token,
    read_token_file,
)
from tracerd._errors import EXIT_DATAERR, BadInput
from tracerd._sessions import Caller, HubLimits

SECRET = "s3cret-token-value"
SECRET_SHA = hashlib.sha256(SECRET.encode()).hexdigest()


def write(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def bad(fn: object, *args: object) -> str:
    with pytest.raises(BadInput) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.exit_status == EXIT_DATAERR
    return str(info.value)


# ---------------------------------------------------------------------- load_config


def test_empty_config_is_all_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "d.toml", ""))
    assert cfg == DaemonConfig()
    assert (cfg.socket, cfg.listen, cfg.insecure, cfg.limits) == (
        DEFAULT_SOCKET, [], False, HubLimits())
    assert cfg.max_message_bytes == DEFAULT_MAX_MESSAGE


def test_full_config(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", """
socket = "/run/t.sock"
socket_group = "tracerd"
listen = ["0.0.0.0:7345", "[::1]:7346"]
tls_cert = "/etc/tracerd/server.pem"
tls_key = "/etc/tracerd/server.key"
tls_client_ca = "/etc/tracerd/ca.pem"
insecure = false
tokens = "/etc/tracerd/tokens.toml"
log_level = "debug"

[limits]
max_sessions = 8
max_watchers = 3
max_tracked_pids = 100
min_interval_ms = 10
max_interval_ms = 60000
max_finished_sessions = 5
max_duration_ms = 1000
max_message_bytes = 1048576
""")
    cfg = load_config(path)
    assert cfg == DaemonConfig(
        socket="/run/t.sock", socket_group="tracerd", listen=["0.0.0.0:7345", "[::1]:7346"],
        tls_cert="/etc/tracerd/server.pem", tls_key="/etc/tracerd/server.key",
        tls_client_ca="/etc/tracerd/ca.pem", insecure=False,
        tokens="/etc/tracerd/tokens.toml", log_level="debug",
        limits=HubLimits(max_sessions=8, max_watchers=3, max_tracked_pids=100,
                         min_interval_ms=10, max_interval_ms=60000, max_finished_sessions=5,
                         max_duration_ms=1000),
        max_message_bytes=1 << 20)


def test_partial_limits_keep_the_other_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "d.toml", 'socket = ""\n[limits]\nmax_sessions = 2\n'))
    assert cfg.socket == ""
    assert cfg.limits == HubLimits(max_sessions=2)
    assert cfg.max_message_bytes == DEFAULT_MAX_MESSAGE


@pytest.mark.parametrize(("text", "message"), [
    ('sockets = "/x"\n', "unknown key 'sockets'"),
    ("socket = 5\n", "socket: expected str, got int"),
    ("log_level = true\n", "log_level: expected str, got bool"),
    ('listen = "0.0.0.0:1"\n', "listen: expected list, got str"),
    ('listen = ["127.0.0.1:1", 7]\n', "listen[1]: expected str, got int"),
    ('insecure = "yes"\n', "insecure: expected bool, got str"),
    ("insecure = 1\n", "insecure: expected bool, got int"),
    ("limits = 5\n", "limits: expected dict, got int"),
    ('[limits]\nmax_sessions = "8"\n', "limits.max_sessions: expected int, got str"),
    ("[limits]\nmax_sessions = true\n", "limits.max_sessions: expected an integer, got a boolean"),
    ("[limits]\nmax_watchers = 1.5\n", "limits.max_watchers: expected int, got float"),
    ("[limits]\nmax_sessions = 0\n", "limits.max_sessions: must be > 0, got 0"),
    ("[limits]\nmax_message_bytes = -1\n", "limits.max_message_bytes: must be > 0, got -1"),
    ("[limits]\nmax_bogus = 3\n", "unknown key 'limits.max_bogus'"),
    ("socket = \n", "not valid TOML"),
])
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "daemon.toml", text)
    msg = bad(load_config, path)
    assert msg.startswith(f"{path}: "), msg
    assert message in msg, msg


def test_missing_config_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    assert bad(load_config, path) == f"{path}: cannot read: No such file or directory"


# ---------------------------------------------------------------------- check_transport


def tcp(addr: str, **kw: object) -> DaemonConfig:
    return DaemonConfig(listen=[addr], **kw)  # type: ignore[arg-type]


TLS: dict[str, object] = {"tls_cert": "/c.pem", "tls_key": "/k.pem"}


def test_unix_socket_alone_is_fine() -> None:
    check_transport(DaemonConfig())


def test_nothing_to_listen_on() -> None:
    assert bad(check_transport, DaemonConfig(socket="")) == (
        "nothing to listen on: give a socket or --listen")


def test_tcp_needs_tls() -> None:
    msg = bad(check_transport, tcp("0.0.0.0:7345", tokens="/t.toml"))
    assert msg.startswith("--listen 0.0.0.0:7345: TCP needs TLS"), msg
    assert "TCP needs TLS" in bad(check_transport, tcp("0.0.0.0:7345", tls_cert="/c.pem",
                                                       tokens="/t.toml"))
    assert "TCP needs TLS" in bad(check_transport, tcp("0.0.0.0:7345", tls_key="/k.pem",
                                                       tokens="/t.toml"))


def test_tcp_needs_authentication() -> None:
    msg = bad(check_transport, tcp("0.0.0.0:7345", **TLS))
    assert msg.startswith("--listen 0.0.0.0:7345: TCP clients must authenticate"), msg
    check_transport(tcp("0.0.0.0:7345", tokens="/t.toml", **TLS))
    check_transport(tcp("0.0.0.0:7345", tls_client_ca="/ca.pem", **TLS))
    # TLS is required even on loopback when not --insecure
    assert "TCP needs TLS" in bad(check_transport, tcp("127.0.0.1:7345", tokens="/t.toml"))


@pytest.mark.parametrize("addr", ["127.0.0.1:7345", "127.1.2.3:1", "localhost:7345",
                                  "[::1]:7345", "::1:7345"])
def test_insecure_allowed_on_loopback(addr: str) -> None:
    check_transport(tcp(addr, insecure=True, tokens="/t.toml"))


def test_insecure_needs_tokens_and_no_tls() -> None:
    # Any local user can reach a loopback port: without tokens it would be an open door.
    assert "--insecure needs --tokens" in bad(check_transport,
                                              tcp("127.0.0.1:1", insecure=True))
    msg = bad(check_transport, tcp("127.0.0.1:1", insecure=True, tokens="/t.toml", **TLS))
    assert "--insecure cannot be combined with TLS" in msg


@pytest.mark.parametrize("addr", ["0.0.0.0:7345", "10.0.0.1:7345", "[::]:7345", ":7345",
                                  "example.com:7345", "[fe80::1]:7345"])
def test_insecure_refused_elsewhere(addr: str) -> None:
    msg = bad(check_transport, tcp(addr, insecure=True, tokens="/t.toml"))
    assert msg == (f"--listen {addr}: --insecure (plaintext TCP) is allowed on loopback "
                   "addresses only")


@pytest.mark.parametrize("addr", ["7345", "host:", "host:port", "127.0.0.1"])
def test_listen_address_must_be_host_port(addr: str) -> None:
    assert bad(check_transport, tcp(addr, insecure=True, tokens="/t.toml")) == (
        f"--listen {addr}: expected HOST:PORT")


def test_every_listener_is_checked() -> None:
    cfg = DaemonConfig(listen=["127.0.0.1:1", "0.0.0.0:2"], insecure=True, tokens="/t.toml")
    assert bad(check_transport, cfg).startswith("--listen 0.0.0.0:2:")


# ---------------------------------------------------------------------- tokens


def tokens_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    return write(tmp_path / "tokens.toml", text, mode)


def test_load_tokens(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, f"""
[[token]]
name = "ci"
sha256 = "{SECRET_SHA}"
uids = [1000, 1001]
exec_rules = true
max_sessions = 4

[[token]]
name = "ops"
secret = "other-secret"
admin = true
""")
    ci, ops = load_tokens(path)
    assert ci == Token(digest=bytes.fromhex(SECRET_SHA), caller=Caller(
        name="ci", uids=frozenset({1000, 1001}), exec_rules=True, max_sessions=4, admin=False))
    assert ops == Token(digest=digest("other-secret"), caller=Caller(
        name="ops", uids=None, exec_rules=False, max_sessions=None, admin=True))


def test_sha256_and_secret_are_equivalent(tmp_path: Path) -> None:
    by_hash = load_tokens(tokens_file(tmp_path, token(f'sha256 = "{SECRET_SHA}"')))
    by_secret = load_tokens(tokens_file(tmp_path, token(f'secret = "{SECRET}"')))
    assert by_hash == by_secret
    upper = load_tokens(tokens_file(tmp_path, token(f'sha256 = "{SECRET_SHA.upper()}"')))
    assert upper == by_hash
    assert digest(SECRET) == hashlib.sha256(SECRET.encode()).digest()


def test_empty_tokens_file(tmp_path: Path) -> None:
    assert load_tokens(tokens_file(tmp_path, "")) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o001, 0o610])
def test_tokens_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tokens_file(tmp_path, "", mode)
    msg = bad(load_tokens, path)
    assert msg == (f"{path}: a tokens file must be owned by root and inaccessible to group "
                   f"and others (it is uid 0, mode {mode:04o}): chown root {path}; "
                   f"chmod 600 {path}")


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_tokens_file_private_modes_are_fine(tmp_path: Path, mode: int) -> None:
    assert load_tokens(tokens_file(tmp_path, "", mode)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_tokens_file_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, "")
    os.chown(path, 65534, -1)
    msg = bad(load_tokens, path)
    assert msg.startswith(f"{path}: a tokens file must be owned by root"), msg
    assert "(it is uid 65534, mode 0600)" in msg


def test_missing_tokens_file(tmp_path: Path) -> None:
    path = str(tmp_path / "none.toml")
    assert bad(load_tokens, path) == f"{path}: cannot read: No such file or directory"


def test_tokens_file_not_toml(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, "[[token]\n")
    assert bad(load_tokens, path).startswith(f"{path}: not valid TOML")


def token(body: str) -> str:
    return f'[[token]]\nname = "ci"\n{body}\n'


OK = f'sha256 = "{SECRET_SHA}"'


@pytest.mark.parametrize(("text", "message"), [
    ('tokens = []\n', "unknown key 'tokens'"),
    ('[token]\nname = "ci"\n', "token: expected list, got dict"),
    ('token = ["ci"]\n', "token[0]: expected dict, got str"),
    (token(OK + "\nuid = 1"), "unknown key 'token[0].uid'"),
    (f"[[token]]\n{OK}\n", "token[0].name: expected str, got NoneType"),
    (f"[[token]]\nname = 3\n{OK}\n", "token[0].name: expected str, got int"),
    (f'[[token]]\nname = ""\n{OK}\n', "token[0].name: '' is empty, reserved or repeated"),
    (f'[[token]]\nname = "local"\n{OK}\n',
     "token[0].name: 'local' is empty, reserved or repeated"),
    (f'[[token]]\nname = "rule:deploy"\n{OK}\n',  # would own that rule's sessions
     "token[0].name: 'rule:deploy' is empty, reserved or repeated"),
    (token(OK) + token('secret = "x"'), "token[1].name: 'ci' is empty, reserved or repeated"),
    (token(""), "token[0]"),  # neither sha256 nor secret
    (token(OK + '\nsecret = "x"'), "token[0]"),  # both
    (token('sha256 = "abc"'), "token[0].sha256: expected 64 hex digits"),
    (token('sha256 = "' + "zz" * 32 + '"'), "token[0].sha256: expected 64 hex digits"),
    (token('sha256 = "' + "ab" * 33 + '"'), "token[0].sha256: expected 64 hex digits"),
    (token("sha256 = 5"), "token[0].sha256: expected str, got int"),
    (token("secret = 5"), "token[0].secret: expected str, got int"),
    (token(OK + '\nuids = 1000'), "token[0].uids: expected list, got int"),
    (token(OK + '\nuids = [1000, "x"]'), "token[0].uids[1]: expected int, got str"),
    (token(OK + '\nuids = [true]'), "token[0].uids[0]: expected an integer, got a boolean"),
    (token(OK + '\nexec_rules = 1'), "token[0].exec_rules: expected bool, got int"),
    (token(OK + '\nadmin = "yes"'), "token[0].admin: expected bool, got str"),
    (token(OK + '\nmax_sessions = "4"'), "token[0].max_sessions: expected int, got str"),
    (token(OK + '\nmax_sessions = false'),
     "token[0].max_sessions: expected an integer, got a boolean"),
])
def test_bad_tokens(tmp_path: Path, text: str, message: str) -> None:
    path = tokens_file(tmp_path, text)
    msg = bad(load_tokens, path)
    assert msg.startswith(f"{path}: "), msg
    assert message in msg, msg


def test_exactly_one_of_sha256_and_secret(tmp_path: Path) -> None:
    for body in ("", OK + '\nsecret = "x"'):
        msg = bad(load_tokens, tokens_file(tmp_path, token(body)))
        assert "token[0]" in msg and "give exactly one of sha256 and secret" in msg, msg


def test_second_token_errors_name_its_index(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, token(OK) + '[[token]]\nname = "b"\nsha256 = "00"\n')
    assert bad(load_tokens, path) == f"{path}: token[1].sha256: expected 64 hex digits"


def test_match_token(tmp_path: Path) -> None:
    tokens = load_tokens(tokens_file(tmp_path, f"""
[[token]]
name = "ci"
sha256 = "{SECRET_SHA}"
[[token]]
name = "ops"
secret = "ops-secret"
admin = true
"""))
    ci = match_token(tokens, SECRET)
    assert ci is not None and ci.name == "ci" and not ci.admin
    ops = match_token(tokens, "ops-secret")
    assert ops is not None and ops.name == "ops" and ops.admin
    assert match_token(tokens, "wrong") is None
    assert match_token(tokens, "") is None
    assert match_token(tokens, SECRET + " ") is None
    assert match_token([], SECRET) is None
    assert Caller(name="local") == LOCAL and LOCAL.admin and LOCAL.uids is None


def test_read_token_file(tmp_path: Path) -> None:
    p = tmp_path / "token"
    p.write_text(f"  {SECRET}  \nsecond line\n")
    assert read_token_file(str(p)) == SECRET
    p.write_text(f"\n\n{SECRET}\n")
    assert read_token_file(str(p)) == SECRET
    p.write_text(SECRET)
    assert read_token_file(str(p)) == SECRET


@pytest.mark.parametrize("text", ["", "\n", "  \n\t\n"])
def test_read_token_file_empty(tmp_path: Path, text: str) -> None:
    p = tmp_path / "token"
    p.write_text(text)
    assert bad(read_token_file, str(p)) == f"{p}: the token file is empty"


def test_read_token_file_missing(tmp_path: Path) -> None:
    p = tmp_path / "missing"
    assert bad(read_token_file, str(p)) == (
        f"{p}: cannot read the token: No such file or directory")


# ---------------------------------------------------------------------- watch rules etc.

KILL_BUDGET = ('[[assertion]]\nname = "few"\ntype = "syscall_calls"\n'
               'syscall_name_pattern = "openat"\nmax_calls = 3\naction = "kill"\n')


def test_watch_rules_history_metrics_and_otlp_parse(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text(KILL_BUDGET)
    cfg = load_config(write(tmp_path / "c.toml", """
state_dir = "/srv/tracerd"
metrics = "127.0.0.1:9464"
[history]
max_age_days = 7
max_sessions = 500
[otlp]
endpoint = "collector:4317"
insecure = true
headers = { authorization = "Bearer x" }
metrics_interval_s = 0
[[rule]]
name = "deploy"
path = "/opt//deploy.sh"
uids = [1000]
budget = "b.toml"
syscalls = ["file"]
[[rule]]
name = "guarded"
comm = "job"
budget = "b.toml"
actions = ["enforce"]
"""))
    assert cfg.state_dir == "/srv/tracerd" and cfg.metrics == "127.0.0.1:9464"
    assert (cfg.history_max_age_days, cfg.history_max_sessions) == (7.0, 500)
    assert cfg.otlp is not None and cfg.otlp.endpoint == "collector:4317"
    assert cfg.otlp.headers == (("authorization", "Bearer x"),)
    assert cfg.otlp.metrics_interval_s == 0
    deploy, guarded = cfg.rules
    assert deploy.path == "/opt/deploy.sh" and deploy.uids == frozenset({1000})
    assert deploy.alert and not guarded.alert
    # Without "enforce" a kill is reported, not carried out.
    assert [a.action for a in deploy.options.budget] == ["fail"]
    assert [a.action for a in guarded.options.budget] == ["kill"]
    assert deploy.options.syscalls and guarded.options.syscalls is None
    assert deploy.options.per_process and deploy.options.label == "rule:deploy"


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\nname = "x"\n', "rule 'x': give path, comm or cgroup"),
    ('[[rule]]\nname = "x"\ncomm = "a"\n[[rule]]\nname = "x"\ncomm = "b"\n',
     "rule[1].name: 'x' is used by an earlier rule"),
    ('[[rule]]\nname = "a b"\ncomm = "a"\n', "rule[0].name: 'a b': 1 to 64 letters"),
    ('[[rule]]\nname = "x"\npath = "rel/x.sh"\n', "path: 'rel/x.sh' must be absolute"),
    ('[[rule]]\nname = "x"\ncomm = "sixteen-letters!"\n', "longer than the kernel's 15-byte"),
    ('[[rule]]\nname = "x"\ncomm = "a"\nwhen = 1\n', "unknown key 'rule[0].when'"),
    ('[[rule]]\nname = "x"\ncomm = "a"\nactions = ["page"]\n', "actions: 'page': use alert"),
    ('[[rule]]\nname = "x"\ncomm = "a"\nsyscalls = ["nosuchcall"]\n', "syscalls:"),
    ('[[rule]]\nname = "x"\ncomm = "a"\nbudget = "missing.toml"\n', "rule 'x': budget:"),
    ('[[rule]]\nname = "x"\ncomm = "a"\nuids = []\n', "uids: a non-empty list"),
    ('[[rule]]\nname = "x"\ncgroup = "no/such/cgroup/here"\n', "rule 'x': cgroup:"),
    ('[otlp]\ninsecure = true\n', "otlp.endpoint: required"),
    ('[otlp]\nendpoint = "nohost"\n', "otlp.endpoint nohost: expected HOST:PORT"),
    ('metrics = "9464"\n', "metrics 9464: expected HOST:PORT"),
    ('[history]\nmax_age_days = 0\n', "history.max_age_days: must be > 0"),
    ('[history]\nkeep = 1\n', "unknown key 'history.keep'"),
    ('[history]\nmax_age_days = inf\n', "history.max_age_days: expected a number in 0..36500"),
    ('[otlp]\nendpoint = "c:4317"\nmetrics_interval_s = nan\n', "metrics_interval_s: expected"),
    ('[otlp]\nendpoint = "c:4317"\nca_file = "nope.pem"\n', "otlp.ca_file:"),
    ('metrics = ":9464"\n', "give the address to listen on"),
    ('[limits]\nringbuf_pages = 3\n', "limits.ringbuf_pages: a power of 2"),
    ('[limits]\nmax_blocks = -1\n', "limits.max_blocks: must be >= 0"),
    ('[limits]\nmax_blocks = 65537\n', "limits.max_blocks: at most 65536"),
    ('[limits]\nmax_stats = 0\n', "limits.max_stats: must be > 0"),
])
def test_bad_monitoring_config_is_refused_naming_the_key(tmp_path: Path, text: str,
                                                         message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        load_config(write(tmp_path / "c.toml", text))


def test_zero_counter_blocks_is_a_setting(tmp_path: Path) -> None:
    # 0 blocks: every count goes to the stats map (the only kernel limit that may be 0).
    cfg = load_config(write(tmp_path / "c.toml", "[limits]\nmax_blocks = 0\n"))
    assert cfg.kernel_limits == {"max_blocks": 0}
