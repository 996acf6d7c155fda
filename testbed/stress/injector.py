"""Carrying out a stress script against a live run: follow its events and processes, fire steps, act."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from testbed.emulation.injection import write_injection
from testbed.monitor.sources import FileTail
from testbed.procfs import ENDED, START_TICKS, STATE, stat_fields
from testbed.stress.flood import ATTACKS, flood
from testbed.stress.spec import StressTest
from testbed.stress.steps import (
    ContStep,
    CorruptStep,
    FloodStep,
    ImpersonateStep,
    KillAggregatorStep,
    KillStep,
    LieStep,
    LinkStep,
    SlowStep,
    Step,
    StopStep,
)


class InjectionError(Exception):
    """A step that could not be carried out (no such process yet, no router address...)."""


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None when it is gone or a zombie.

    A pid with the start time recorded earlier is the same process, not a later one given the same pid.
    """
    fields = stat_fields(pid)
    return None if fields is None or fields[STATE] in ENDED else int(fields[START_TICKS])


class LiveRun:
    """What the injector sees of a running `testbed run`: its events, processes and emulated clock."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.tail = FileTail(self.run_dir / "events.jsonl")
        self.events: list[dict] = []
        self.pids: dict[str, int] = {}               # name -> pid, as processes.json says now
        self.seen: dict[int, tuple[str, int]] = {}   # pid -> (name, start time): every process of every launch
        self.launched = time.monotonic()
        self.dilation = 1.0                          # wall seconds per emulated second, from the events
        self.event_clock = False                     # the run's emulated time jumps from event to event
        self.round, self.round_open = 0, False

    def poll(self) -> list[dict]:
        """New events since the last poll (the run's state follows them); processes re-read."""
        new = self.tail.read()
        for event in new:
            kind = event["kind"]
            if kind == "run_started":
                self.dilation = float(event["dilation"]["factor"])
                self.event_clock = event.get("clock") == "events"
            elif kind == "dilation_changed":
                self.dilation = float(event["factor"])
            elif kind == "round_started":
                self.round, self.round_open = event["round"], True
            elif kind == "round_closed":
                self.round_open = False
        self.events += new
        self._read_processes()
        return new

    def _read_processes(self) -> None:
        try:
            pids = json.loads((self.run_dir / "processes.json").read_text())
        except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write: next poll
            return
        self.pids = {name: pid for name, pid in pids.items() if isinstance(pid, int)}
        for name, pid in self.pids.items():
            if pid not in self.seen and (started := start_time(pid)) is not None:
                self.seen[pid] = (name, started)

    def now_t(self) -> float:
        """Emulated seconds since the run started: the last event's clock, advanced by the wall time since under
        the real clock; under the event clock the run's time moves only from event to event (host seconds
        stand for no emulated time there), so a delay in emulated seconds waits for events that far on."""
        if not self.events:
            return 0.0
        last = self.events[-1]
        if self.event_clock:
            return last["t"]
        return last["t"] + max(0.0, time.time() - last["wall"]) / self.dilation

    def seq(self) -> int:
        return self.events[-1]["seq"] if self.events else -1

    def affected_round(self) -> int:
        """The first round an injection now can affect: the open one, else the next."""
        return self.round if self.round_open else self.round + 1

    def alive(self, pid: int) -> bool:
        """True while the process seen under `pid` still runs (not a later process given the same pid)."""
        return pid in self.seen and start_time(pid) == self.seen[pid][1]

    def orphans(self) -> list[str]:
        return [f"{name} (pid {pid})" for pid, (name, _) in sorted(self.seen.items()) if self.alive(pid)]


@dataclass
class Pending:
    index: int
    step: Step
    fired_t: float | None = None  # emulated time at which its trigger held


class Script:
    """The steps not yet carried out, and which of them are due now."""

    def __init__(self, test: StressTest):
        self.test = test
        self.pending = [Pending(index, step) for index, step in enumerate(test.steps)]
        self.done_t: dict[str, float] = {}  # step name -> emulated time it was carried out

    def due(self, run: LiveRun, new_events: list[dict]) -> list[Pending]:
        due = []
        for item in self.pending:
            if item.fired_t is None:
                item.fired_t = self._fired(item.step, run, new_events)
            when = item.step.when
            delay = when.delay_s + when.delay_deadlines * self.test.scenario.deadline_s
            if item.fired_t is not None and run.now_t() >= item.fired_t + delay:
                due.append(item)
        return due

    def done(self, item: Pending, record: dict) -> None:
        self.pending.remove(item)
        if item.step.name is not None:
            self.done_t[item.step.name] = record["t"]

    def _fired(self, step: Step, run: LiveRun, new_events: list[dict]) -> float | None:
        when = step.when
        if when.event is not None:
            match = next((e for e in new_events if all(e.get(k) == v for k, v in when.event.items())), None)
            return None if match is None else match["t"]
        if when.t is not None:
            return when.t if run.now_t() >= when.t else None
        if when.wall_s is not None:
            return run.now_t() if time.monotonic() - run.launched >= when.wall_s else None
        if when.after is not None:
            return self.done_t.get(when.after)
        targets = self.test.targets(step)  # start: as soon as the clients' processes exist
        return run.now_t() if targets and all(cid in run.pids for cid in targets) else None


class Injector:
    """Carries out steps: signals to processes, control files for clients, floods, aggregator kills."""

    def __init__(self, test: StressTest, run: LiveRun):
        self.test, self.run = test, run
        self.injected: dict[str, dict] = {}  # client -> control fields written so far (slowdown, link)
        self.stopped: set[int] = set()       # pids we froze and have not thawed
        self.resume_pending = False          # the aggregator was killed: the runner resumes the run

    def carry_out(self, item: Pending) -> dict:
        """Do one step now; the record of what was done (an `error` when it could not be)."""
        step, run = item.step, self.run
        record = {"step": step.name or f"#{item.index + 1}", "do": step.do, "clients": self.test.targets(step),
                  "seq": run.seq(), "round": run.affected_round(), "t": round(run.now_t(), 3),
                  "wall_s": round(time.monotonic() - run.launched, 3)}
        try:
            record.update(getattr(self, f"_{step.do}")(step, record["clients"]))
        except (InjectionError, OSError) as error:
            record["error"] = str(error)
        return record

    def release(self) -> None:
        """Thaw every process we froze (a run must not end with stopped processes)."""
        for pid in list(self.stopped):
            if self.run.alive(pid):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()

    # ---------------------------------------------------------------- actions
    def _signal(self, clients: list[str], sig: signal.Signals) -> dict:
        pids = {}
        for cid in clients:
            pid = self.run.pids.get(cid)
            if pid is None or not self.run.alive(pid):
                raise InjectionError(f"{cid} has no running process")
            os.kill(pid, sig)
            pids[cid] = pid
        return {"pids": pids}

    def _kill(self, step: KillStep, clients: list[str]) -> dict:
        return self._signal(clients, signal.SIGKILL)

    def _stop(self, step: StopStep, clients: list[str]) -> dict:
        done = self._signal(clients, signal.SIGSTOP)
        self.stopped.update(done["pids"].values())
        return done

    def _cont(self, step: ContStep, clients: list[str]) -> dict:
        done = self._signal(clients, signal.SIGCONT)
        self.stopped.difference_update(done["pids"].values())
        return done

    def _control(self, clients: list[str], **fields) -> dict:
        for cid in clients:  # the control file holds the client's whole injected state: merge
            state = self.injected.setdefault(cid, {})
            if "link" in fields:
                state["link"] = {**state.get("link", {}), **fields["link"]}
            else:
                state.update(fields)
            if self.run.event_clock:  # the client reads it later in host time: when it holds from, emulated
                state["t"] = round(self.run.now_t(), 4)
            write_injection(self.run.run_dir, cid, **state)
        return {"injected": {cid: self.injected[cid] for cid in clients}}

    def _slow(self, step: SlowStep, clients: list[str]) -> dict:
        return self._control(clients, slowdown=step.slowdown)

    def _link(self, step: LinkStep, clients: list[str]) -> dict:
        return self._control(clients, link=dict(step.link))

    def _corrupt(self, step: CorruptStep, clients: list[str]) -> dict:
        return self._control(clients, scale=step.scale)

    def _lie(self, step: LieStep, clients: list[str]) -> dict:
        lies = {"samples": step.samples, "step_scale": step.step_scale}
        return self._control(clients, **{key: value for key, value in lies.items() if value is not None})

    def _impersonate(self, step: ImpersonateStep, clients: list[str]) -> dict:
        return self._control(clients, impersonate=step.victim)

    def _flood(self, step: FloodStep, clients: list[str]) -> dict:
        started = next((e for e in self.run.events if e["kind"] == "run_started"), None)
        try:
            router = json.loads((self.run.run_dir / "endpoints.json").read_text())["router"]
        except (FileNotFoundError, ValueError, KeyError):
            raise InjectionError("no router address yet (endpoints.json)") from None
        if started is None:
            raise InjectionError("the run has not started: its message size limit is unknown")
        sent = flood(router, list(step.attacks or ATTACKS), step.repeat, started["max_message_bytes"])
        return {"sent": [asdict(item) for item in sent]}

    def _kill_aggregator(self, step: KillAggregatorStep, clients: list[str]) -> dict:
        pid = self.run.pids.get("aggregator")
        if pid is None or not self.run.alive(pid):
            raise InjectionError("the aggregator has no running process")
        os.kill(pid, signal.SIGKILL)
        self.resume_pending = True
        return {"pids": {"aggregator": pid}}
