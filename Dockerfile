# tracerd in a container: the daemon (`tracerd serve`, the default command) or any
# other tracerd command, with BCC from Debian and the project in a virtualenv.
#
# Build:  docker build -t tracerd .
# Run the daemon (BPF needs the host's kernel: privileges, the host's pid namespace,
# tracefs and BTF under /sys/kernel, the kernel headers BCC compiles against):
#   docker run -d --name tracerd --privileged --pid=host \
#     -v /sys/kernel:/sys/kernel \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro \
#     -v /run/tracerd:/run/tracerd \
#     -v /var/lib/tracerd:/var/lib/tracerd \
#     -v /etc/tracerd:/etc/tracerd:ro \
#     tracerd
#   tracerd sessions list          # on the host, through /run/tracerd/tracerd.sock
# /var/lib/tracerd keeps the history of finished sessions across containers,
# /etc/tracerd/tracerd.toml is read when it exists (`docker kill -s HUP tracerd`
# reloads it). Add --network=host for --listen or /metrics on the host's addresses.
# Other flags go after the image name: ... tracerd serve --log-level debug.
# One-off trace: docker run --rm (same flags) tracerd run -- CMD
#
# CI lints this file (make packaging-check: hadolint) and checks what it copies
# (tests/unit/test_packaging.py); no container engine runs there.

ARG DEBIAN=debian:bookworm-slim

# ---- build: the virtualenv, made by an unprivileged user -------------------------
FROM ${DEBIAN} AS build
# Versions are not pinned (DL3008): the image follows bookworm and its security
# updates, and the archive drops superseded versions, so pins would break the build
# at the next point release. The base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/build \
      --shell /usr/sbin/nologin build \
 && install -d -o 10001 -g 10001 /opt/tracerd
USER 10001:10001
WORKDIR /home/build/src
COPY --chown=10001:10001 pyproject.toml README.md ./
COPY --chown=10001:10001 tracerd ./tracerd
COPY --chown=10001:10001 bpf ./bpf
# --system-site-packages: the runtime stage's python3-bpfcc (bcc is not on PyPI: the
# PyPI project of that name is unrelated). The venv's own packages come first.
# `pip install .` installs the dependencies pyproject.toml lists, and bpf/ as data
# files (share/tracerd/bpf), where the daemon finds its BPF sources.
RUN python3 -m venv --system-site-packages /opt/tracerd/venv \
 && /opt/tracerd/venv/bin/pip install --no-cache-dir . \
 && /opt/tracerd/venv/bin/tracerd --version

# ---- runtime ---------------------------------------------------------------------
FROM ${DEBIAN}
LABEL org.opencontainers.image.title="tracerd" \
      org.opencontainers.image.description="Exact per-process syscall accounting with eBPF" \
      org.opencontainers.image.licenses="Apache-2.0"
# python3-bpfcc brings libbpfcc (BCC with its own clang/LLVM); no compiler needed.
# xz-utils: BCC unpacks /sys/kernel/kheaders.tar.xz when the host has no headers.
# Not pinned, for the reason given in the build stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc xz-utils \
 && rm -rf /var/lib/apt/lists/*
# Same path as in the build stage: the venv's scripts name their interpreter by it.
# root:root so that no unprivileged uid can change the code root runs.
COPY --from=build --chown=root:root /opt/tracerd/venv /opt/tracerd/venv
ENV PATH=/opt/tracerd/venv/bin:$PATH
# The daemon runs as root: loading BPF takes CAP_BPF and CAP_PERFMON (the container
# is --privileged anyway). Clients reach it through the socket in /run/tracerd.
WORKDIR /
# Healthy once the daemon answers on its Unix socket (clients there are the local
# administrator: no token needed). The first start compiles the BPF programs.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["tracerd", "sessions", "list", "--state", "running"]
# SIGTERM: every session gets its final report before the daemon exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tracerd"]
CMD ["serve"]
