"""tracerd: exact per-process syscall accounting with eBPF."""

__version__ = "0.1.0"
