"""`python -m crm_shared._guard USER SIGNAL -- COMMAND...`: run COMMAND as USER and stop it with
SIGNAL when this guard is told to stop or when the process that started the guard dies.

PostgreSQL must not run as root, and the kernel drops a child's parent-death signal when the
child changes user, so a root-owned guard carries the parent-death signal on its behalf.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    user, stop_signal, separator, *command = argv
    if separator != "--" or not command:
        print(__doc__, file=sys.stderr)
        return 2
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    entry = pwd.getpwnam(user) if user != "-" else None

    def become_user() -> None:
        if entry is not None:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

    child = subprocess.Popen(command, preexec_fn=become_user)
    forward = getattr(signal, stop_signal)

    def stop(_signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(forward)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
