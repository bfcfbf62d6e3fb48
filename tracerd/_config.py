"""Daemon configuration and access tokens: parsing and validation only (no grpc, no bcc).

Config file (TOML, every key optional; command-line flags override it)::

    socket = "/run/tracerd/tracerd.sock"   # Unix socket; "" disables it
    socket_group = "tracerd"               # group allowed to connect (mode 0660)
    listen = ["0.0.0.0:7345"]              # TCP listeners: TLS unless insecure
    tls_cert = "/etc/tracerd/server.pem"
    tls_key = "/etc/tracerd/server.key"
    tls_client_ca = "/etc/tracerd/ca.pem"  # set: mTLS, clients must present a certificate
    insecure = false                       # plaintext TCP, loopback addresses only
    tokens = "/etc/tracerd/tokens.toml"
    log_level = "info"
    [limits]
    max_sessions = 64                      # and the other HubLimits fields, max_message_bytes

Tokens file (TOML, owned by root, no access for group or others)::

    [[token]]
    name = "ci"                   # shown as the owner of its sessions
    sha256 = "<hex digest of the secret>"   # or: secret = "<the secret itself>"
    uids = [1000, 1001]           # whose processes it may trace; omitted: anyone's
    exec_rules = false            # may start exec-rule and cgroup sessions (default false)
    max_sessions = 4              # running at once (default: the daemon's limit)
    admin = false                 # sees and controls every session (default: its own)

A client on the Unix socket without a token is the local administrator: reaching the
socket already took root or the socket's group.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ._errors import BadInput
from ._sessions import Caller, HubLimits

DEFAULT_SOCKET = "/run/tracerd/tracerd.sock"
DEFAULT_MAX_MESSAGE = 16 << 20

LOCAL = Caller(name="local")


@dataclass(frozen=True)
class Token:
    digest: bytes  #: sha256 of the secret
    caller: Caller


@dataclass
class DaemonConfig:
    socket: str = DEFAULT_SOCKET
    socket_group: str | None = None
    listen: list[str] = field(default_factory=list)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure: bool = False
    tokens: str | None = None
    log_level: str = "info"
    limits: HubLimits = field(default_factory=HubLimits)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE


def _type_name(v: object) -> str:
    return type(v).__name__


def _check(path: str, where: str, key: str, value: Any, want: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and want is int:
        raise BadInput(f"{path}: {where}{key}: expected an integer, got a boolean")
    if not isinstance(value, want):
        names = want.__name__ if isinstance(want, type) else " or ".join(w.__name__ for w in want)
        raise BadInput(f"{path}: {where}{key}: expected {names}, got {_type_name(value)}")
    return value


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: not valid TOML: {e}") from None


_STR_KEYS = ("socket", "socket_group", "tls_cert", "tls_key", "tls_client_ca", "tokens",
             "log_level")


def load_config(path: str) -> DaemonConfig:
    data = _read_toml(path)
    cfg = DaemonConfig()
    for key, value in data.items():
        if key in _STR_KEYS:
            setattr(cfg, key, _check(path, "", key, value, str))
        elif key == "listen":
            items = _check(path, "", key, value, list)
            cfg.listen = [_check(path, "", f"listen[{i}]", v, str) for i, v in enumerate(items)]
        elif key == "insecure":
            cfg.insecure = _check(path, "", key, value, bool)
        elif key == "limits":
            cfg.limits, cfg.max_message_bytes = _limits(path, _check(path, "", key, value, dict),
                                                        cfg.limits, cfg.max_message_bytes)
        else:
            raise BadInput(f"{path}: unknown key {key!r}")
    return cfg


def _limits(path: str, data: dict[str, Any], base: HubLimits,
            max_msg: int) -> tuple[HubLimits, int]:
    names = {f.name for f in fields(HubLimits)}
    changes: dict[str, int] = {}
    for key, value in data.items():
        v = _check(path, "limits.", key, value, int)
        if v <= 0:
            raise BadInput(f"{path}: limits.{key}: must be > 0, got {v}")
        if key == "max_message_bytes":
            max_msg = v
        elif key in names:
            changes[key] = v
        else:
            raise BadInput(f"{path}: unknown key 'limits.{key}'")
    return replace(base, **changes), max_msg


def check_transport(cfg: DaemonConfig) -> None:
    """Refuse listeners that would expose the daemon without TLS or authentication."""
    if not cfg.socket and not cfg.listen:
        raise BadInput("nothing to listen on: give a socket or --listen")
    for addr in cfg.listen:
        host = _host_of(addr)
        if cfg.insecure:
            if not _is_loopback(host):
                raise BadInput(f"--listen {addr}: --insecure (plaintext TCP) is allowed on "
                               "loopback addresses only")
            if cfg.tls_cert or cfg.tls_key or cfg.tls_client_ca:
                raise BadInput(f"--listen {addr}: --insecure cannot be combined with TLS "
                               "options (the listener would be plaintext)")
            if not cfg.tokens:
                # Any local user can reach a loopback port: tokens are the only gate.
                raise BadInput(f"--listen {addr}: --insecure needs --tokens (any local user "
                               "can connect to a loopback port)")
            continue
        if not (cfg.tls_cert and cfg.tls_key):
            raise BadInput(f"--listen {addr}: TCP needs TLS (--tls-cert and --tls-key), or "
                           "--insecure on a loopback address")
        if not (cfg.tokens or cfg.tls_client_ca):
            raise BadInput(f"--listen {addr}: TCP clients must authenticate: give --tokens "
                           "or --tls-client-ca (mTLS)")


def _host_of(addr: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInput(f"--listen {addr}: expected HOST:PORT")
    return host.strip("[]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------- tokens


_TOKEN_KEYS = {"name", "sha256", "secret", "uids", "exec_rules", "max_sessions", "admin"}


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def load_tokens(path: str) -> list[Token]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        raise BadInput(f"{path}: a tokens file must be owned by root and inaccessible to "
                       f"group and others (it is uid {st.st_uid}, mode "
                       f"{stat.S_IMODE(st.st_mode):04o}): chown root {path}; chmod 600 {path}")
    data = _read_toml(path)
    extra = set(data) - {"token"}
    if extra:
        raise BadInput(f"{path}: unknown key {sorted(extra)[0]!r}")
    tokens: list[Token] = []
    seen_names: set[str] = set()
    for i, t in enumerate(_check(path, "", "token", data.get("token", []), list)):
        where = f"token[{i}]."
        _check(path, "", f"token[{i}]", t, dict)
        unknown = set(t) - _TOKEN_KEYS
        if unknown:
            raise BadInput(f"{path}: unknown key '{where}{sorted(unknown)[0]}'")
        name = _check(path, where, "name", t.get("name"), str)
        if not name or name == LOCAL.name or name in seen_names:
            raise BadInput(f"{path}: {where}name: {name!r} is empty, reserved or repeated")
        seen_names.add(name)
        if ("sha256" in t) == ("secret" in t):
            raise BadInput(f"{path}: token[{i}]: give exactly one of sha256 and secret")
        if "secret" in t:
            d = digest(_check(path, where, "secret", t["secret"], str))
        else:
            hexd = _check(path, where, "sha256", t["sha256"], str)
            try:
                d = bytes.fromhex(hexd)
            except ValueError:
                d = b""
            if len(d) != 32:
                raise BadInput(f"{path}: {where}sha256: expected 64 hex digits")
        uids = None
        if "uids" in t:
            raw = _check(path, where, "uids", t["uids"], list)
            uids = frozenset(_check(path, where, f"uids[{j}]", u, int) for j, u in enumerate(raw))
            if any(u < 0 for u in uids):
                raise BadInput(f"{path}: {where}uids: uids are >= 0")
        max_sessions = None
        if "max_sessions" in t:
            max_sessions = _check(path, where, "max_sessions", t["max_sessions"], int)
            if max_sessions <= 0:
                raise BadInput(f"{path}: {where}max_sessions: must be > 0, got {max_sessions}")
        if any(hmac.compare_digest(d, other.digest) for other in tokens):
            raise BadInput(f"{path}: {where}: the same secret as an earlier token")
        caller = Caller(name=name, uids=uids,
                        exec_rules=_check(path, where, "exec_rules", t.get("exec_rules", False),
                                          bool),
                        max_sessions=max_sessions,
                        admin=_check(path, where, "admin", t.get("admin", False), bool))
        tokens.append(Token(digest=d, caller=caller))
    return tokens


def match_token(tokens: list[Token], secret: str) -> Caller | None:
    d = digest(secret)
    found = None
    for t in tokens:  # compare against every token: timing says nothing about which matched
        if hmac.compare_digest(t.digest, d):
            found = t.caller
    return found


def read_token_file(path: str) -> str:
    """A client's token: the first line of ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BadInput(f"{path}: cannot read the token: {e.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise BadInput(f"{path}: the token file is empty")
    return token
