"""The client's clock: the real one's arithmetic, and that pacing, links and injections go through the interface."""

import time

import numpy as np
import pytest

from testbed.client.injected import StressInjection
from testbed.client.timing import RoundTiming
from testbed.config.schema import LinkSpec
from testbed.emulation.clock import Clock, EventClock, RealClock
from testbed.emulation.link import LinkModel, LinkShaper
from testbed.emulation.throttle import ComputeThrottle


class HostTime:
    """A fake host: monotonic seconds that only move when the process sleeps."""

    def __init__(self):
        self.t, self.slept = 100.0, []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def real_clock(dilation: float) -> tuple[RealClock, HostTime]:
    host = HostTime()
    return RealClock(dilation, sleep=host.sleep, monotonic=host.monotonic), host


def test_real_clock_reads_host_seconds_since_start_over_the_dilation():
    clock, host = real_clock(4.0)
    assert clock.now() == 0.0
    host.t += 8.0
    assert clock.now() == pytest.approx(2.0)
    clock.set_dilation(8.0)  # a raised factor re-reads the past at the new rate, as before
    assert clock.now() == pytest.approx(1.0)


def test_real_clock_sleeps_dilation_host_seconds_per_emulated_second():
    clock, host = real_clock(3.0)
    clock.advance(2.0)
    assert host.slept == [pytest.approx(6.0)]
    assert clock.now() == pytest.approx(2.0)
    assert clock.host_s(10.0) == pytest.approx(30.0)


def test_advance_to_sleeps_only_what_is_left_and_never_goes_back():
    clock, host = real_clock(2.0)
    host.t += 2.0  # one emulated second of work done
    clock.advance_to(3.0)
    assert host.slept == [pytest.approx(4.0)]
    clock.advance_to(1.0)  # already past: no sleep
    assert len(host.slept) == 1 and clock.now() == pytest.approx(3.0)


@pytest.mark.parametrize("factor", [0.5, 0.0, float("nan")])
def test_a_dilation_below_one_is_refused(factor):
    with pytest.raises(ValueError, match="dilation"):
        RealClock(factor)
    clock, _ = real_clock(2.0)
    with pytest.raises(ValueError):
        clock.set_dilation(factor)
    assert clock.dilation == 2.0


def test_a_real_and_an_event_like_clock_both_satisfy_the_interface():
    assert isinstance(RealClock(), Clock) and isinstance(EventClock(), Clock)
    assert not isinstance(object(), Clock)


class CpuTime:
    """Fake process CPU seconds, moved by the test as if the process worked."""

    def __init__(self, monkeypatch):
        self.t = 5.0
        monkeypatch.setattr(time, "process_time", lambda: self.t)


def test_the_throttle_paces_on_the_clock_cpu_seconds_over_throughput(monkeypatch):
    cpu, clock = CpuTime(monkeypatch), EventClock()
    throttle = ComputeThrottle(0.5, clock)  # half a host core
    throttle.start()
    cpu.t += 1.0
    throttle.pace()
    assert clock.now() == pytest.approx(2.0)  # 1 CPU second at 0.5 cores: 2 emulated seconds
    throttle.retune(0.25)  # an injected slowdown: only later work takes the new pace
    cpu.t += 1.0
    report = throttle.finish()
    assert clock.now() == pytest.approx(6.0)
    assert (report.cpu_s, report.target_s, report.elapsed_s, report.overshoot) == pytest.approx((2.0, 6.0, 6.0, 1.0))


def test_a_slowdown_scripted_before_the_phase_began_bills_all_of_it_on_the_event_clock(monkeypatch):
    """An event clock's client reads an injection some host time after it was scripted (`since_t`): work done
    in between, in a phase that began after `since_t`, is billed at the new pace too; scripted mid-phase, the
    change holds from when it is read, as before."""
    cpu, clock = CpuTime(monkeypatch), EventClock(start_t=10.0)
    throttle = ComputeThrottle(0.5, clock)
    throttle.start()  # the phase begins at 10 emulated s
    cpu.t += 1.0
    throttle.pace()
    assert clock.now() == pytest.approx(12.0)
    throttle.retune(0.25, since_t=10.0)  # scripted as the phase began: its first CPU second too at 0.25 cores
    cpu.t += 1.0
    assert throttle.finish().target_s == pytest.approx(8.0) and clock.now() == pytest.approx(18.0)
    throttle.start()  # 18 emulated s
    cpu.t += 1.0
    throttle.retune(0.125, since_t=19.0)  # scripted after the phase began: only later work
    cpu.t += 1.0
    assert throttle.finish().target_s == pytest.approx(4.0 + 8.0)


def test_an_injections_scripted_time_is_read_and_a_bad_one_ignored(tmp_path):
    from testbed.config.loader import load_link
    from testbed.emulation.injection import InjectedState, write_injection

    state = InjectedState(tmp_path / "control" / "c01.json", load_link("wifi"))
    write_injection(tmp_path, "c01", slowdown=10, t=12.5)
    assert state.changed() and (state.slowdown, state.since_t) == (10.0, 12.5)
    write_injection(tmp_path, "c01", slowdown=2, t=-1)
    assert not state.changed() and (state.slowdown, state.since_t) == (10.0, 12.5)  # invalid: the last holds
    write_injection(tmp_path, "c01", slowdown=3)
    assert state.changed() and (state.slowdown, state.since_t) == (3.0, None)


def test_the_throttle_on_a_real_clock_sleeps_the_dilated_remainder(monkeypatch):
    cpu = CpuTime(monkeypatch)
    clock, host = real_clock(4.0)
    throttle = ComputeThrottle(2.0, clock)
    throttle.start()
    cpu.t, host.t = cpu.t + 1.0, host.t + 1.0  # 1 CPU second took 1 host second: target 0.5 emulated = 2 host
    report = throttle.finish()
    assert host.slept == [pytest.approx(1.0)]
    assert (report.elapsed_s, report.wall_s, report.overshoot) == pytest.approx((0.5, 2.0, 1.0))


def test_a_throttle_paced_by_the_kernel_only_measures(monkeypatch):
    cpu, clock = CpuTime(monkeypatch), EventClock()
    throttle = ComputeThrottle(1.0, clock, paced=False)
    throttle.start()
    cpu.t += 3.0
    report = throttle.finish()
    assert clock.now() == 0.0 and report.target_s == pytest.approx(3.0) and report.elapsed_s == 0.0


def test_the_link_waits_its_transfer_time_on_the_clock():
    link = LinkSpec(name="test", downlink_mbps=8.0, uplink_mbps=8.0, latency_ms=0.0)
    clock = EventClock()
    shaper = LinkShaper(LinkModel(link, seed=1), clock)
    shaper.wait(1_000_000, "up")  # 8 Mbit at 8 Mbit/s
    assert clock.now() == pytest.approx(1.0) and shaper.emulated_s["up"] == pytest.approx(1.0)


def test_outside_stress_runs_the_injection_changes_nothing():
    link = LinkSpec(name="test", downlink_mbps=8.0, uplink_mbps=8.0, latency_ms=10.0)
    injection = StressInjection(None, link, seed=0)
    shaper = LinkShaper(LinkModel(link, seed=0), EventClock())
    model = shaper.model
    trained = {"w": np.ones(3, np.float32)}
    injection.keep_fetched(trained)
    assert not injection.take_up(shaper) and shaper.model is model
    assert injection.slowed(1.5) == 1.5 and injection.samples(32) == 32 and injection.sender("c01") == "c01"
    assert injection.tampered(trained) is trained


def test_an_injected_step_scale_uses_the_fetched_copy(tmp_path):
    from testbed.emulation.injection import control_path, write_injection

    link = LinkSpec(name="test", downlink_mbps=8.0, uplink_mbps=8.0, latency_ms=10.0)
    injection = StressInjection(control_path(tmp_path, "c01"), link, seed=0)
    shaper = LinkShaper(LinkModel(link, seed=0), EventClock())
    write_injection(tmp_path, "c01", step_scale=0.5, slowdown=4, link={"uplink_mbps": 1.0})
    assert injection.take_up(shaper) and shaper.model.link.uplink_mbps == 1.0
    assert injection.slowed(2.0) == pytest.approx(0.5)
    fetched = {"w": np.zeros(2, np.float32)}
    injection.keep_fetched(fetched)
    fetched["w"] += 100  # the received frames may be reused: the injection kept a copy
    uploaded = injection.tampered({"w": np.full(2, 2.0, np.float32)})
    assert np.allclose(uploaded["w"], 1.0)


def test_the_reported_timings_keep_the_update_field_names():
    timing = RoundTiming(started=3.0, download_s=1.0, compute_s=2.0, cpu_s=0.5, overshoot=1.1, elapsed_s=3.5,
                         upload_s=0.7)
    assert list(timing.reported()) == ["download_s", "compute_s", "elapsed_s", "cpu_s", "overshoot"]
    assert timing.observed() == {**timing.reported(), "upload_s": 0.7}
