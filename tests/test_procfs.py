"""testbed.procfs: the fields of /proc/<pid>/stat, read from real processes."""

import os
import subprocess
import sys
import time

from testbed.procfs import ENDED, GROUP, PARENT, START_TICKS, STATE, running, stat_fields

# Renames itself (prctl PR_SET_NAME = 15) to a name that holds ')' and spaces, then waits for stdin to close.
RENAMED = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'x) y (z', 0, 0, 0); print('named', flush=True); "
           "sys.stdin.read()")


def test_fields_are_read_after_a_command_name_holding_parentheses_and_spaces():
    child = subprocess.Popen([sys.executable, "-c", RENAMED], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "named\n"
        with open(f"/proc/{child.pid}/comm") as comm:
            assert comm.read().strip() == "x) y (z"  # the name the parser has to get past
        fields = stat_fields(child.pid)
        assert fields is not None and fields[STATE] in ("S", "R")
        assert int(fields[PARENT]) == os.getpid() and int(fields[GROUP]) == os.getpgid(child.pid)
        assert int(fields[START_TICKS]) >= int(stat_fields(os.getpid())[START_TICKS])  # started after us
        assert running(child.pid)
    finally:
        child.stdin.close()
        child.wait()
        child.stdout.close()


def test_an_ended_unreaped_child_is_not_running_and_a_reaped_one_has_no_fields():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while (fields := stat_fields(child.pid))[STATE] not in ENDED and time.monotonic() < deadline:
        time.sleep(0.02)  # it exits on its own; unreaped, it stays a zombie
    assert fields[STATE] in ENDED and not running(child.pid)
    child.wait()
    assert stat_fields(child.pid) is None and not running(child.pid)
