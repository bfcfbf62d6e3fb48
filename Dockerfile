# tracerd in a container: BCC from the distribution, the project in a virtualenv.
# Run (BPF needs the host's kernel, pid namespace and tracefs):
#   docker run --rm --privileged --pid=host -v /sys/kernel:/sys/kernel \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro tracerd run -- CMD
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-bpfcc \
      libbpfcc gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tracerd
COPY pyproject.toml README.md ./
COPY tracerd ./tracerd
COPY bpf ./bpf
# --system-site-packages exposes the distribution's bcc module inside the venv.
RUN python3 -m venv --system-site-packages /opt/tracerd/venv \
 && /opt/tracerd/venv/bin/pip install --no-cache-dir . \
 && ln -s /opt/tracerd/venv/bin/tracerd /usr/local/bin/tracerd
ENTRYPOINT ["tracerd"]
CMD ["--help"]
