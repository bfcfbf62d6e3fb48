#!/usr/bin/env python3
"""Generate tracerd/syscalls/_signatures.py (syscall name -> C parameters) from the kernel.

The source of truth is the kernel's own prototype list, ``include/linux/syscalls.h`` of the
Debian linux-headers package installed on the build machine, e.g.::

    asmlinkage long sys_openat(int dfd, const char __user *filename, int flags,
                               umode_t mode);

Syscall *names* are joined to those *entry points* through the same .tbl files that
tools/gen_syscalls.py reads (``4 common stat sys_newstat``), so ``stat`` gets the
parameters of ``sys_newstat`` and ``umount2`` those of ``sys_umount``. What the generic
header lacks or gets wrong for a 64-bit arch is filled in by the small, commented override
tables below. Rerunning gives byte-identical output, so CI can run
``python3 tools/gen_signatures.py --check``; without the header that check is skipped
(exit 0), because the header is a build-machine package, not part of this repository.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Same directory: the .tbl locations and ABI selections live in one place.
from gen_syscalls import SPECS, TableError

_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_HEADER = Path("/usr/src/linux-headers-6.1.0-56-common/include/linux/syscalls.h")
OUTPUT = "tracerd/syscalls/_signatures.py"

Param = tuple[str, str]  # (C type, parameter name)
Signature = tuple[Param, ...]

# --- overrides -------------------------------------------------------------------------------

# Entry points that include/linux/syscalls.h does not declare because they are
# architecture-specific (arch/x86/kernel/*.c, arch/arm64/kernel/sys.c). Types and names are
# those of the SYSCALL_DEFINEn in the arch code.
_MISSING: Mapping[str, Signature] = {
    # Both arches define mmap with a byte offset (the generic header only has mmap_pgoff).
    "sys_mmap": (
        ("unsigned long", "addr"),
        ("unsigned long", "len"),
        ("unsigned long", "prot"),
        ("unsigned long", "flags"),
        ("unsigned long", "fd"),
        ("unsigned long", "off"),
    ),
    # x86_64 only (arch/x86/kernel/process_64.c).
    "sys_arch_prctl": (("int", "option"), ("unsigned long", "arg2")),
    # Takes no arguments: the kernel reads the signal frame from the user stack.
    "sys_rt_sigreturn": (),
    # x86_64 only (arch/x86/kernel/ldt.c, ioport.c).
    "sys_modify_ldt": (
        ("int", "func"),
        ("void __user *", "ptr"),
        ("unsigned long", "bytecount"),
    ),
    "sys_iopl": (("unsigned int", "level"),),
    "sys_ioperm": (
        ("unsigned long", "from"),
        ("unsigned long", "num"),
        ("int", "turn_on"),
    ),
}

# clone's register order is a per-arch Kconfig choice, so the header declares it three
# times under #ifdef, unnamed. x86_64 uses kernel/fork.c's default order; arm64 selects
# CONFIG_CLONE_BACKWARDS, which swaps tls and child_tidptr.
_CLONE_X86_64: Signature = (
    ("unsigned long", "flags"),
    ("unsigned long", "newsp"),
    ("int __user *", "parent_tidptr"),
    ("int __user *", "child_tidptr"),
    ("unsigned long", "tls"),
)
_CLONE_AARCH64: Signature = (
    ("unsigned long", "flags"),
    ("unsigned long", "newsp"),
    ("int __user *", "parent_tidptr"),
    ("unsigned long", "tls"),
    ("int __user *", "child_tidptr"),
)
_PER_ARCH: Mapping[str, Mapping[str, Signature]] = {
    "x86_64": {"sys_clone": _CLONE_X86_64},
    "aarch64": {"sys_clone": _CLONE_AARCH64},
}

# Declared more than once under #ifdef; the variant a 64-bit kernel builds.
_DUPLICATES: Mapping[str, Signature] = {
    # CONFIG_ARCH_SPLIT_ARG64 (32-bit only) splits the u64 mask in two.
    "sys_fanotify_mark": (
        ("int", "fanotify_fd"),
        ("unsigned int", "flags"),
        ("u64", "mask"),
        ("int", "fd"),
        ("const char __user *", "pathname"),
    ),
    # Not in either 64-bit table; resolved only so the parser can refuse other duplicates.
    "sys_sigsuspend": (("old_sigset_t", "mask"),),
    "sys_clone": (),  # always replaced by _PER_ARCH
}

# Prototypes the header leaves unnamed. Names are those of the SYSCALL_DEFINEn in the kernel
# sources (net/socket.c, kernel/signal.c), which is also what strace and the kernel's own
# tracepoints call them; the types still come from the header and the counts must match.
_NAMES: Mapping[str, tuple[str, ...]] = {
    "sys_socket": ("family", "type", "protocol"),
    "sys_socketpair": ("family", "type", "protocol", "usockvec"),
    "sys_bind": ("fd", "umyaddr", "addrlen"),
    "sys_listen": ("fd", "backlog"),
    "sys_accept": ("fd", "upeer_sockaddr", "upeer_addrlen"),
    "sys_accept4": ("fd", "upeer_sockaddr", "upeer_addrlen", "flags"),
    "sys_connect": ("fd", "uservaddr", "addrlen"),
    "sys_getsockname": ("fd", "usockaddr", "usockaddr_len"),
    "sys_getpeername": ("fd", "usockaddr", "usockaddr_len"),
    "sys_sendto": ("fd", "buff", "len", "flags", "addr", "addr_len"),
    "sys_recvfrom": ("fd", "ubuf", "size", "flags", "addr", "addr_len"),
    "sys_rt_sigaction": ("sig", "act", "oact", "sigsetsize"),
    "sys_io_submit": ("ctx_id", "nr", "iocbpp"),
    "sys_shutdown": ("fd", "how"),
    "sys_ppoll": ("ufds", "nfds", "tsp", "sigmask", "sigsetsize"),
    "sys_pselect6": ("n", "inp", "outp", "exp", "tsp", "sig"),
}


class HeaderError(ValueError):
    """The header has a prototype this generator cannot read, or an unresolved duplicate."""


# --- parsing ---------------------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
# Parameter lists hold no parentheses in this header (no function-pointer parameters), so
# "up to the first ')'" is the whole list, even across lines.
_PROTO = re.compile(r"asmlinkage\s+long\s+(sys_\w+)\s*\(([^)]*)\)\s*;")
_TOKEN = re.compile(r"\w+|\*")
# Words that end a type rather than name a parameter: "unsigned long" is a type alone.
_TYPE_WORDS = frozenset(
    {"char", "short", "int", "long", "signed", "unsigned", "void", "const", "__user"}
)


def _type_text(tokens: Sequence[str]) -> str:
    """Canonical spelling: words space-separated, '*' attached to what follows it."""
    out = ""
    for tok in tokens:
        if not out:
            out = tok
        elif tok == "*":
            out += "*" if out.endswith("*") else " *"
        elif out.endswith("*"):
            out += tok
        else:
            out += " " + tok
    return out


def parse_param(text: str) -> Param:
    """``"const char __user * filename"`` -> ``("const char __user *", "filename")``.

    An unnamed parameter gets the name ``""``.
    """
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise HeaderError(f"empty parameter in {text!r}")
    last = tokens[-1]
    if last == "*" or len(tokens) == 1 or last in _TYPE_WORDS or tokens[-2] in {
        "struct", "union", "enum"
    }:
        return _type_text(tokens), ""
    return _type_text(tokens[:-1]), last


def parse_header(text: str) -> dict[str, list[Signature]]:
    """Every ``asmlinkage long sys_*(...)`` prototype, by entry point, in header order.

    Preprocessor conditionals are not evaluated: an entry point declared under several
    ``#if`` branches keeps every variant, and the caller decides (see ``_DUPLICATES``).
    """
    protos: dict[str, list[Signature]] = {}
    for m in _PROTO.finditer(_COMMENT.sub(" ", text)):
        entry, params_text = m.group(1), " ".join(m.group(2).split())
        if params_text in {"", "void"}:
            sig: Signature = ()
        else:
            sig = tuple(parse_param(p) for p in params_text.split(","))
        protos.setdefault(entry, []).append(sig)
    if not protos:
        raise HeaderError("no 'asmlinkage long sys_*(...);' prototypes found")
    return protos


def _named(entry: str, sig: Signature) -> Signature:
    """Fill in parameter names the header omits, from _NAMES (``arg<i>`` if not listed)."""
    if all(name for _, name in sig):
        return sig
    names = _NAMES.get(entry)
    if names is None:
        # Unnamed and unknown: keep the position as the name so the table stays complete.
        return tuple((ctype, name or f"arg{i}") for i, (ctype, name) in enumerate(sig))
    if len(names) != len(sig):
        raise HeaderError(f"{entry}: _NAMES has {len(names)} names for {len(sig)} parameters")
    return tuple((ctype, name) for (ctype, _), name in zip(sig, names, strict=True))


def resolve(protos: Mapping[str, list[Signature]], arch: str, entry: str) -> Signature | None:
    """Signature of ``entry`` on ``arch``: per-arch override, header, then _MISSING."""
    per_arch = _PER_ARCH.get(arch, {})
    if entry in per_arch:
        return per_arch[entry]
    variants = protos.get(entry)
    if variants is None:
        return _MISSING.get(entry)
    if len(variants) > 1:
        if entry not in _DUPLICATES:
            raise HeaderError(f"{entry} is declared {len(variants)} times; add it to _DUPLICATES")
        return _DUPLICATES[entry]
    return _named(entry, variants[0])


def parse_entries(text: str, abis: frozenset[str]) -> dict[str, str]:
    """{syscall name: entry point} for a .tbl's rows in ``abis`` that have an entry point."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#") or fields[1] not in abis:
            continue
        entries[fields[2]] = fields[3]
    return entries


# --- output ----------------------------------------------------------------------------------


def _header_package(header: Path) -> tuple[str, str]:
    """(header package directory, kernel version) for ``header``, for the banner.

    Only the package name is shown, not the path, so the output does not depend on where
    the package is unpacked.
    """
    for part in header.parts:
        m = re.match(r"linux-headers-(\d+\.\d+)", part)
        if m:
            return part, m.group(1)
    return "unknown package", "unknown version"


@dataclass(frozen=True)
class Tables:
    """What the generated module holds."""

    common: dict[str, Signature]  #: the same on every arch that has the syscall
    per_arch: dict[str, dict[str, Signature]]  #: arch -> syscalls whose parameters differ
    missing: dict[str, list[str]]  #: arch -> syscall names without any prototype


def build(header_text: str, root: Path = _ROOT) -> Tables:
    """Signatures of every syscall in the .tbl files, split into common and per-arch."""
    protos = parse_header(header_text)
    by_arch: dict[str, dict[str, Signature]] = {}
    unknown: dict[str, list[str]] = {}
    for spec in SPECS:
        source = (root / spec.source).read_text(encoding="utf-8")
        sigs: dict[str, Signature] = {}
        for name, entry in parse_entries(source, spec.abis).items():
            if entry == "sys_ni_syscall":
                continue  # not implemented: no arguments to describe
            sig = resolve(protos, spec.arch, entry)
            if sig is None:
                unknown.setdefault(spec.arch, []).append(name)
            else:
                sigs[name] = sig
        by_arch[spec.arch] = sigs

    common: dict[str, Signature] = {}
    differing: dict[str, dict[str, Signature]] = {arch: {} for arch in by_arch}
    for name in sorted({n for sigs in by_arch.values() for n in sigs}):
        variants = {arch: sigs[name] for arch, sigs in by_arch.items() if name in sigs}
        if len(set(variants.values())) == 1:
            common[name] = next(iter(variants.values()))
        else:
            for arch, sig in variants.items():
                differing[arch][name] = sig
    return Tables(common, differing, {a: sorted(n) for a, n in sorted(unknown.items())})


def _render_sig(sig: Signature, indent: str) -> list[str]:
    if not sig:
        return ["(),"]
    lines = ["("]
    lines += [f'{indent}    ("{ctype}", "{name}"),' for ctype, name in sig]
    lines.append(f"{indent}),")
    return lines


def _render_table(table: Mapping[str, Signature], indent: str) -> list[str]:
    lines: list[str] = []
    for name, sig in sorted(table.items()):
        body = _render_sig(sig, indent)
        lines.append(f'{indent}"{name}": {body[0]}')
        lines += body[1:]
    return lines


def render(header: Path, header_text: str, root: Path = _ROOT) -> str:
    """Python source of the generated module; depends only on its arguments."""
    tables = build(header_text, root)
    package, version = _header_package(header)
    lines = [
        "# Generated by tools/gen_signatures.py from include/linux/syscalls.h"
        f" (Linux {version}); do not edit.",
        f"# Header package: {package}.",
        "# Syscall name -> ((C type, parameter name), ...) in argument-register order.",
        "# Names without a prototype in that header (too new, or arch code the generator",
        "# has no override for), left to be printed as six raw arguments:",
    ]
    for arch, names in tables.missing.items():
        lines += textwrap.wrap(
            ", ".join(names), width=99, initial_indent=f"#   {arch}: ",
            subsequent_indent="#     ", break_on_hyphens=False,
        )
    lines += [
        "",
        "SIGNATURES: dict[str, tuple[tuple[str, str], ...]] = {",
        *_render_table(tables.common, "    "),
        "}",
        "",
        "# Syscalls whose parameters differ between architectures; these win over SIGNATURES.",
        "ARCH_SIGNATURES: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {",
    ]
    for arch, table in sorted(tables.per_arch.items()):
        lines.append(f'    "{arch}": {{')
        lines += _render_table(table, "        ")
        lines.append("    },")
    lines += ["}", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, root: Path = _ROOT) -> int:
    parser = argparse.ArgumentParser(
        description=f"Generate {OUTPUT} from the kernel's include/linux/syscalls.h."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the checked-in generated file is not up to date",
    )
    parser.add_argument(
        "--header",
        type=Path,
        default=DEFAULT_HEADER,
        help=f"the kernel header to read (default: {DEFAULT_HEADER})",
    )
    args = parser.parse_args(argv)

    header: Path = args.header
    try:
        header_text = header.read_text(encoding="utf-8")
    except FileNotFoundError:
        if args.check:
            # The header is a package on the build machine; a checkout without it cannot
            # regenerate, but the checked-in file is still what CI last verified.
            print(f"gen_signatures: {header}: header not found, skipped", file=sys.stderr)
            return 0
        print(f"gen_signatures: {header}: header not found", file=sys.stderr)
        return 2
    try:
        wanted = render(header, header_text, root).encode("utf-8")
    except (OSError, HeaderError, TableError) as exc:
        print(f"gen_signatures: {exc}", file=sys.stderr)
        return 2

    out = root / OUTPUT
    try:
        # Compare bytes, not text: text mode would hide line-ending changes.
        current: bytes | None = out.read_bytes()
    except FileNotFoundError:
        current = None
    if current == wanted:
        return 0
    if args.check:
        print(
            f"gen_signatures: out of date: {OUTPUT}; run python3 tools/gen_signatures.py",
            file=sys.stderr,
        )
        return 1
    out.write_bytes(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
