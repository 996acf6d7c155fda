"""What Linux's /proc/<pid>/stat says of a process (proc(5)), read in one place.

The command name, field 2, is written in parentheses and may itself hold spaces and ')', so the fields
are split after the last ')'. Indexes below count from the field after the name.
"""

from __future__ import annotations

from pathlib import Path

STATE, PARENT, GROUP, USER_TICKS, SYSTEM_TICKS, START_TICKS = 0, 1, 2, 11, 12, 19
ENDED = ("Z", "X")  # zombie, dead: the process has ended, only its entry is left


def stat_fields(pid: int | str) -> list[str] | None:
    """The stat fields after the command name (STATE, PARENT, ... index them); None when no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # never was, or ended (and was reaped) meanwhile
        return None
    return text.rsplit(")", 1)[1].split()


def running(pid: int | str) -> bool:
    """Whether the process exists and has not ended (a zombie has)."""
    fields = stat_fields(pid)
    return fields is not None and fields[STATE] not in ENDED
