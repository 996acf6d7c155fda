"""The run's process group: children forked from the fork server, their exit codes, none left behind.

The children run standard-library functions: the fork server imports nothing of the tests."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runs import alive
from testbed.launch.processes import ProcessGroup, group_members

TERM_PROOF = ["sh", "-c", "trap '' TERM; sleep 30"]  # a grandchild that outlives SIGTERM


def sleeping(group_id: int) -> bool:
    """Whether the TERM_PROOF shell's sleep has begun in the group."""
    for pid in group_members(group_id):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                return True
        except FileNotFoundError:
            pass
    return False


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_children_report_their_exit_codes_and_share_the_servers_process_group():
    group = ProcessGroup([])
    try:
        done = group.start("done", time.sleep, 0.0)
        code = group.start("code", sys.exit, 3)
        failed = group.start("failed", int, "not a number")  # an exception: exit code 1, as multiprocessing's
        sleeper = group.start("sleeper", time.sleep, 30)
        for child in (done, code, failed):
            child.join(10)
        assert (done.exitcode, code.exitcode, failed.exitcode) == (0, 3, 1)
        assert sleeper.is_alive() and group.alive() == ["sleeper"]
        assert os.getpgid(sleeper.pid) == group.server.pid != os.getpgid(0)
        assert set(group.pids()) == {"done", "code", "failed", "sleeper", "forkserver"}
        sleeper.terminate()
        sleeper.join(5)
        assert sleeper.exitcode == -signal.SIGTERM
    finally:
        group.stop()


def test_stop_ends_the_whole_group_even_what_ignores_sigterm():
    group = ProcessGroup([])
    group.start("child", subprocess.call, TERM_PROOF)
    group_id = group.server.pid
    assert wait_until(lambda: sleeping(group_id), 10)  # the server, the child, its shell (and the shell's sleep)
    pids = group_members(group_id)
    started = time.monotonic()
    group.stop(grace_s=0.5)
    assert time.monotonic() - started < 3
    assert not any(alive(pid) for pid in pids), [pid for pid in pids if alive(pid)]  # gone when stop() returns
    assert group.processes["child"].exitcode is not None and group.alive() == []
    group.stop()  # again: nothing to do


def test_a_killed_launcher_leaves_no_process_behind():
    script = ("import subprocess, time\n"
              "from testbed.launch.processes import ProcessGroup\n"
              "group = ProcessGroup([])\n"
              f"group.start('child', subprocess.call, {TERM_PROOF!r})\n"
              "print(group.server.pid, flush=True)\n"
              "time.sleep(60)\n")
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    group_id = int(launcher.stdout.readline())
    assert wait_until(lambda: sleeping(group_id), 10)
    pids = group_members(group_id)
    launcher.kill()
    launcher.wait()
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 5), [pid for pid in pids if alive(pid)]


def test_children_end_on_sigterm_even_when_the_launcher_ignores_it():
    """The launcher's ignored signals (an aggregator finishing ignores SIGTERM) must not reach the children."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    group = ProcessGroup([])
    try:
        sleeper = group.start("sleeper", time.sleep, 30)
        sleeper.terminate()
        sleeper.join(10)
        assert sleeper.exitcode == -signal.SIGTERM
    finally:
        group.stop()
        signal.signal(signal.SIGTERM, previous)


def test_the_fork_server_started_early_does_not_outlive_a_scenario_refused_while_assets_are_prepared(
        monkeypatch, write_scenario, tmp_path):
    import pytest

    import testbed.launch.run as launch
    from testbed.errors import UserError

    servers = []
    warm_up = ProcessGroup.warm_up

    def watched(group):
        warm_up(group)
        servers.append(group.server.pid)

    def refuse(scenario, run_dir, **options):
        time.sleep(0.5)  # the server is importing meanwhile
        raise UserError("the host cannot carry this fleet")

    monkeypatch.setattr(ProcessGroup, "warm_up", watched)
    monkeypatch.setattr(launch, "prepare_assets", refuse)
    with pytest.raises(UserError, match="cannot carry"):
        launch.run(str(write_scenario()), [], out=str(tmp_path / "run"))
    assert len(servers) == 1 and not alive(servers[0]) and not group_members(servers[0])


FAULTS_PER_BLOCK = """
import resource, sys
from testbed.launch.processes import keep_freed_blocks

def faults(blocks=40, size=8 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(blocks):
        block = bytearray(size)  # zero-filled: every page touched
        del block
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / blocks

inherited = faults()
keep_freed_blocks()
print(inherited, faults())
"""


def test_an_evaluating_process_reuses_freed_blocks_that_the_inherited_threshold_would_map_anew():
    """Every forked child inherits a 1 MiB mmap threshold (ProcessGroup); the aggregator undoes it, since its
    evaluation allocates and frees activations of several MiB per layer (keep_freed_blocks)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_BLOCK], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    inherited, kept = map(float, out.split())
    assert inherited > 1000  # an 8 MiB block is 2048 pages, each faulted in anew
    assert kept < inherited / 10
