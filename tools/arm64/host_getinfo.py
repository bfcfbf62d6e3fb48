#!/usr/bin/env python3
"""The host's half of the arm64 daemon test: GetInfo through qemu's forwarded port.

    host_getinfo.py SHARE PORT TOKEN [TIMEOUT_S]

Waits until the guest's `tracerd serve` answers inside the guest (it touches
SHARE/serve-ready), then calls GetInfo on 127.0.0.1:PORT (forwarded by qemu to the
guest's listener) over TLS, trusting SHARE/cert.pem, with the bearer TOKEN. Writes a
PASS or FAIL line to SHARE/host-done, which the guest waits for, prints it, and exits 0
only when the daemon that answered runs on aarch64.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tracerd.client import Client, ClientError


def verdict(share: Path, port: int, token: str) -> tuple[bool, str]:
    try:
        with Client(f"127.0.0.1:{port}", token=token, tls_ca=str(share / "cert.pem"),
                    timeout=60) as c:
            info = c.info()
    except ClientError as e:
        return False, f"GetInfo on 127.0.0.1:{port} failed: {e}"
    text = (f"GetInfo on 127.0.0.1:{port} (forwarded to the guest): arch {info.arch}, "
            f"kernel {info.kernel}, tracerd {info.version}, "
            f"features {','.join(info.bpf_features)}")
    return info.arch == "aarch64", text


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    share, port, token = Path(argv[0]), int(argv[1]), argv[2]
    deadline = time.monotonic() + (float(argv[3]) if len(argv) == 4 else 7200.0)
    while not (share / "serve-ready").exists():
        if (share / ".status").exists() or time.monotonic() > deadline:
            print("FAIL: host GetInfo: the guest's daemon never became ready", flush=True)
            return 1
        time.sleep(1)
    ok, text = verdict(share, port, token)
    line = f"{'PASS' if ok else 'FAIL'}: {text}"
    (share / "host-done").write_text(line + "\n")
    print(f"host: {line}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
