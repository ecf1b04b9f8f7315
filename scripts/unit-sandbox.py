"""Run a command under the seccomp rules a systemd unit file asks for, without systemd.

    /usr/bin/python3 scripts/unit-sandbox.py systemd/vllm-discord-bot.service -- CMD [ARGS...]

Reads SystemCallFilter= (allow list and ~deny lines, groups expanded by `systemd-analyze
syscall-filter`), SystemCallErrorNumber=, MemoryDenyWriteExecute= and RestrictAddressFamilies=
from the unit and loads the same kind of filter systemd 252 loads, then execs CMD (children
inherit it). Used by scripts/check-deploy.sh to run the bot's process tests as the unit would
confine them. Needs libseccomp's Python binding (Debian: python3-seccomp).

Not covered: everything that is not seccomp (file system, user, namespaces, capabilities).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import subprocess
import sys

import seccomp  # type: ignore[import-not-found]

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


@functools.cache
def expand(name: str) -> frozenset[str]:
    """A syscall name, or a @group expanded (recursively) through systemd-analyze."""
    if not name.startswith("@"):
        return frozenset({name})
    out = subprocess.run(  # noqa: S603
        ["systemd-analyze", "syscall-filter", "--no-pager", name],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            names |= expand(line)
    return frozenset(names)


def read_unit(path: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if "=" in line and not line.startswith(("#", ";", "[")):
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def build(unit: dict[str, list[str]]) -> seccomp.SyscallFilter:
    allow: set[str] | None = None
    for value in unit.get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = set().union(*(expand(n) for n in value.lstrip("~").split()))
        if allow is None:
            if deny:
                sys.exit("unit-sandbox: the first SystemCallFilter= must be an allow list")
            allow = set(expand("@default"))  # systemd always adds @default to an allow list
        allow = allow - names if deny else allow | names
    if allow is None:
        sys.exit("unit-sandbox: the unit has no SystemCallFilter=")
    errno_name = (unit.get("SystemCallErrorNumber") or [""])[-1]
    default = seccomp.ERRNO(getattr(errno, errno_name)) if errno_name else seccomp.KILL_PROCESS
    f = seccomp.SyscallFilter(defaction=default)

    # Calls restricted by argument get only conditional rules (libseccomp refuses both kinds).
    conditional: set[str] = set()
    if (unit.get("MemoryDenyWriteExecute") or ["no"])[-1] == "yes":
        # As systemd does it: no mapping both writable and executable, no mprotect() to
        # executable, no executable SysV shared memory; refused with EPERM.
        wx = PROT_WRITE | PROT_EXEC
        rules = [
            ("mmap", 2, wx, wx, [(PROT_EXEC, 0), (PROT_WRITE, 0)]),
            ("mprotect", 2, PROT_EXEC, PROT_EXEC, [(PROT_EXEC, 0)]),
            ("pkey_mprotect", 2, PROT_EXEC, PROT_EXEC, [(PROT_EXEC, 0)]),
            ("shmat", 2, SHM_EXEC, SHM_EXEC, [(SHM_EXEC, 0)]),
        ]
        for name, arg, mask, bad, allowed in rules:
            conditional.add(name)
            if errno_name != "EPERM":  # libseccomp refuses a rule that repeats the default
                refuse = seccomp.ERRNO(errno.EPERM)
                f.add_rule(refuse, name, seccomp.Arg(arg, seccomp.MASKED_EQ, mask, bad))
            for ok_mask, ok_value in allowed:
                f.add_rule(
                    seccomp.ALLOW, name, seccomp.Arg(arg, seccomp.MASKED_EQ, ok_mask, ok_value)
                )
    families = " ".join(unit.get("RestrictAddressFamilies", [])).split()
    if families and "socket" in allow:
        conditional.add("socket")
        ok = {getattr(socket, name) for name in families}
        for family in range(46):  # AF_MAX on Linux 6.x
            action = seccomp.ALLOW if family in ok else seccomp.ERRNO(errno.EAFNOSUPPORT)
            f.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))

    for name in sorted(allow - conditional):
        with contextlib.suppress(RuntimeError, ValueError):  # a name libseccomp doesn't know
            f.add_rule(seccomp.ALLOW, name)
    return f


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    build(read_unit(sys.argv[1])).load()  # also sets no_new_privs, as NoNewPrivileges=yes
    os.execvp(sys.argv[3], sys.argv[3:])  # noqa: S606


if __name__ == "__main__":
    main()
