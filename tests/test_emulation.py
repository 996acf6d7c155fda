"""Device emulation: profiles applied in real child processes, pacing, shaping, dilation, schedules, policies."""

import multiprocessing
import os
import time

import numpy as np
import pytest

from testbed.client.costs import DepthCost
from testbed.client.policies import AdaptivePolicy, BudgetPolicy, DeviceModel, StaticPolicy, TaskPolicy
from testbed.config.schema import Availability, EmulationSpec, Failure, LinkSpec, Profile
from testbed.emulation.availability import DeviceSchedule
from testbed.emulation.dilation import choose_dilation, raised
from testbed.emulation.injection import InjectedState, control_path, write_injection
from testbed.emulation.link import LinkModel
from testbed.emulation.memory import MemoryBudget, OutOfMemory

from runs import events, run

HOST_CPUS = len(os.sched_getaffinity(0))


def _in_child(target, *args):
    """Run `target(*args, queue)` in a fresh process (as a client is one) and return what it put."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    try:
        return queue.get(timeout=120)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


def _apply_child(profile, slot, queue):
    import torch

    from testbed.emulation.device import apply_cpu

    applied = apply_cpu(profile, slot)
    queue.put((sorted(os.sched_getaffinity(0)), torch.get_num_threads(), list(applied.cpus)))


@pytest.mark.parametrize("cores,threads", [(1, 1), (4, 4)])
def test_a_profile_pins_cpus_and_caps_threads_in_a_real_process(cores, threads):
    profile = Profile(name="p", cores=cores, threads=threads)
    affinity, torch_threads, cpus = _in_child(_apply_child, profile, 1)
    assert affinity == cpus and len(affinity) == min(cores, HOST_CPUS)
    assert torch_threads == min(threads, len(affinity))


def _throttled_child(throughput, dilation, queue):
    import torch

    from testbed.emulation.calibrate import workload
    from testbed.emulation.clock import RealClock
    from testbed.emulation.throttle import ComputeThrottle

    torch.set_num_threads(1)
    throttle = ComputeThrottle(throughput, RealClock(dilation))
    throttle.start()
    workload(12, after_step=throttle.step)
    report = throttle.finish()
    queue.put((report.cpu_s, report.wall_s))


def test_duty_cycling_makes_wall_time_cpu_time_over_speed_times_dilation():
    cpu_s, wall_s = _in_child(_throttled_child, 0.25, 2.0)  # 8 wall seconds per CPU second
    assert wall_s == pytest.approx(8 * cpu_s, rel=0.15)


def _allocating_child(limit_over_now_mb, queue):
    from testbed.emulation.memory import MemoryBudget, OutOfMemory, reset_peak, resident_mb

    reset_peak()
    budget = MemoryBudget(resident_mb() + limit_over_now_mb, {})
    budget.check()  # under the limit: fine
    ballast = np.ones(int(3 * limit_over_now_mb * 2**20 / 8))  # three times the headroom
    try:
        budget.check()
        queue.put("no error")
    except OutOfMemory as error:
        queue.put(str(error))
    del ballast


def test_going_beyond_memory_mb_in_a_real_process_is_an_out_of_memory_failure():
    reason = _in_child(_allocating_child, 50)
    assert reason.startswith("peak resident memory") and "> memory_mb" in reason


def test_link_shaping_in_the_transport_matches_latency_and_bandwidth():
    from testbed.emulation.calibrate import calibrate_link

    link = LinkSpec(name="t", downlink_mbps=40.0, uplink_mbps=10.0, latency_ms=40.0)
    result = calibrate_link(link, pings=8)
    expected_rtt, rtt = result.rtt_ms
    assert rtt == pytest.approx(expected_rtt, abs=max(2.0, 0.1 * expected_rtt))
    for expected, achieved in (result.down_mbps, result.up_mbps):
        assert achieved == pytest.approx(expected, rel=0.10)


def test_link_model_adds_latency_serialisation_and_retransmissions():
    link = LinkSpec(name="t", downlink_mbps=8.0, uplink_mbps=1.0, latency_ms=100.0, loss=0.01)
    model = LinkModel(link, seed=0)
    assert model.expected_s(1_000_000, "down") == pytest.approx(0.05 + 1.0 + 691 * 0.01 * 0.1)
    draws = [model.transfer_s(1_000_000, "up") for _ in range(200)]
    assert np.mean(draws) == pytest.approx(model.expected_s(1_000_000, "up"), rel=0.02)
    assert LinkModel(link, 3).transfer_s(5000, "up") == LinkModel(link, 3).transfer_s(5000, "up")  # seeded


def test_dilation_is_the_fleet_demand_over_usable_cores_and_says_why():
    fleet = [Profile(name="a", speed=1.0, cores=2, threads=2)] * 3 + [Profile(name="b", speed=0.5)]
    dilation = choose_dilation(EmulationSpec(host_cores=2, headroom=0.75), fleet)
    assert dilation.factor == pytest.approx(6.5 / 1.5) and "6.50 cores" in dilation.reason
    assert choose_dilation(EmulationSpec(host_cores=16), fleet).factor == 1.0
    assert choose_dilation(EmulationSpec(host_cores=2), fleet, concurrent=1).factor == pytest.approx(2 / 1.5)
    fixed = choose_dilation(EmulationSpec(host_cores=2, dilation=2.0), fleet)
    assert fixed.factor == 2.0 and "CPU-starved" in fixed.reason
    alone = choose_dilation(EmulationSpec(host_cores=16), [Profile(name="fast", speed=2.0)])
    assert alone.factor == 2.0 and "runs 1 thread" in alone.reason  # one thread cannot be two cores
    assert raised(3.0, 1.05) is None and raised(3.0, 1.5) == pytest.approx(3.0 * 1.65)
    assert raised(3.0, 5.0) == 6.0  # at most doubling per round


def test_availability_and_faults_are_seeded_per_round_with_the_requested_rates():
    schedule = DeviceSchedule(Availability(online_probability=0.3), Failure(crash_rate=0.1, freeze_rate=0.2), 7)
    online = [schedule.online(r, 0.0) for r in range(2000)]
    faults = [schedule.fault(r) for r in range(2000)]
    assert np.mean(online) == pytest.approx(0.3, abs=0.03)
    assert faults.count("crash") / 2000 == pytest.approx(0.1, abs=0.02)
    assert faults.count("freeze") / 2000 == pytest.approx(0.2, abs=0.03)
    again = DeviceSchedule(Availability(online_probability=0.3), Failure(crash_rate=0.1, freeze_rate=0.2), 7)
    assert [again.online(r, 0.0) for r in range(2000)] == online
    periods = DeviceSchedule(Availability(online_s=10, offline_s=5), Failure(), 0)
    assert [periods.online(1, t) for t in (0, 9.9, 10, 14.9, 15, 26)] == [True, True, False, False, True, False]
    traced = DeviceSchedule(Availability(intervals=((0, 5), (20, 30)), period_s=40), Failure(), 0)
    assert [traced.online(1, t) for t in (1, 10, 25, 41, 50)] == [True, False, True, True, False]


def _device(memory_limit_mb=4096.0, throughput=1.0, uplink=10.0):
    exits = (2, 4, 6, 8)
    costs = {d: DepthCost(d, step_cpu_s=0.1 * d, peak_mb=200.0 + 50 * d, state_bytes=1_000_000 * d) for d in exits}
    link = LinkModel(LinkSpec(name="l", downlink_mbps=80.0, uplink_mbps=uplink, latency_ms=0.0), 0)
    memory = MemoryBudget(memory_limit_mb, {d: c.peak_mb for d, c in costs.items()})
    return DeviceModel(exits, costs, throughput, link, memory, local_steps=10)


def test_policies_pick_depths_by_cap_deadline_task_and_memory():
    # round time at depth d: 10 steps x 0.1 d s + d MB down at 80 Mbit/s + d MB up at 10 Mbit/s = 2 d s
    device = _device()
    assert device.predicted(4) == pytest.approx({"download_s": 0.4, "compute_s": 4.0, "upload_s": 3.2})
    assert StaticPolicy(device, 2, None).choose(60) == 4
    assert StaticPolicy(device, None, None).choose(60) == 8
    assert BudgetPolicy(device, None, None).choose(100) == 8
    assert BudgetPolicy(device, None, None).choose(12) == 4  # 7.6 s fits 85 % of 12 s; 11.4 s does not
    assert BudgetPolicy(device, None, None).choose(1) == 2  # nothing fits: the shallowest
    assert TaskPolicy(device, None, 4).choose(100) == 4
    assert TaskPolicy(device, None, 4).choose(100, preferred=6) == 6  # the aggregator's "auto" pick wins
    small = _device(memory_limit_mb=460.0)  # 200 + 50 d <= 460 only for d <= 4
    assert StaticPolicy(small, None, None).choose(60) == 4 and BudgetPolicy(small, None, None).choose(100) == 4


def test_adaptive_moves_a_client_slowed_tenfold_to_a_shallower_exit_within_two_rounds():
    policy = AdaptivePolicy(_device(), None, None, ema=0.5)
    assert policy.choose(40) == 8
    slowed = {**_device().predicted(8), "compute_s": 10 * _device().predicted(8)["compute_s"]}
    policy.observe(8, slowed)
    first = policy.choose(40)
    policy.observe(first, {**_device().predicted(first), "compute_s": 10 * _device().predicted(first)["compute_s"]})
    assert policy.choose(40) < 8 and min(first, policy.choose(40)) <= 4


def test_budget_memory_check_raises_beyond_the_limit():
    budget = MemoryBudget(1.0, {2: 0.5})
    assert budget.fits(2) and not budget.fits(4)
    with pytest.raises(OutOfMemory):
        budget.check()


def _profile_file(tmp_path, name, **fields):
    lines = [f"name: {name}", "link: wifi", *(f"{key}: {value}" for key, value in fields.items())]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_run_injects_offline_crash_and_out_of_memory_and_still_finishes(write_scenario, tmp_path):
    offline = _profile_file(tmp_path, "offline", **{"availability": "{online_probability: 0.0}"})
    crashing = _profile_file(tmp_path, "crashing", **{"failure": "{crash_rate: 1.0}"})
    tiny = _profile_file(tmp_path, "tiny", memory_mb=64)
    fleet = f"[{{profile: laptop}}, {{profile: {offline}}}, {{profile: {crashing}}}, {{profile: {tiny}}}]"
    run_dir = tmp_path / "run"
    result = run("run", str(write_scenario(fleet=fleet, rounds=2, deadline_s=15)), "--out", str(run_dir), timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    log = events(run_dir)
    kinds = [e["kind"] for e in log]
    assert kinds[-1] == "run_finished"
    assert {e["round"] for e in log if e["kind"] == "client_skipped" and e["client"] == "c01"} == {1, 2}
    crash_joins = [e["pid"] for e in log if e["kind"] == "client_joined" and e["client"] == "c02"]
    assert len(set(crash_joins)) >= 2  # crashed mid-round, restarted by the launcher, joined again
    left = [e for e in log if e["kind"] == "client_left" and e["client"] == "c03"]
    assert left and left[0]["reason"].startswith("out of memory")
    updates = [e for e in log if e["kind"] == "update_received"]
    assert {e["client"] for e in updates} == {"c00"}


def test_the_kernel_backend_sets_a_cpu_quota_and_memory_limit_or_falls_back(write_scenario, tmp_path):
    from testbed.emulation.kernel import probe_kernel_backend

    run_dir = tmp_path / "run"
    scenario = write_scenario(rounds=1, emulation="{backend: kernel, clock: real, dilation: 4}")
    result = run("run", str(scenario), "--out", str(run_dir), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    support = probe_kernel_backend()
    assert "kernel backend:" in result.stdout  # the fallback (or not) is said, in one line
    record = (run_dir / "kernel_backend.json").read_text()
    if support.cpu:
        # laptop: speed 1.217 x 4 threads / dilation 4 = 1.217 cores = 121700 us per 100000 us period
        assert "121700" in record
    started = [e for e in events(run_dir) if e["kind"] == "run_started"][0]
    assert started["backend"] == "kernel" and started["dilation"]["factor"] == 4
    time.sleep(0.5)
    from testbed.emulation.kernel import cleanup_stale

    assert cleanup_stale() == []  # nothing of this run was left behind


def test_an_injected_state_is_taken_up_once_and_a_bad_file_keeps_the_previous_one(tmp_path):
    base = LinkSpec(name="wifi", downlink_mbps=100.0, uplink_mbps=50.0, latency_ms=4.0)
    state = InjectedState(control_path(tmp_path, "c01"), base)
    assert not state.changed() and (state.slowdown, state.link, state.scale) == (1.0, base, 1.0)  # no file yet
    write_injection(tmp_path, "c01", slowdown=10, link={"uplink_mbps": 0.1}, scale=1000)
    assert state.changed() and not state.changed()  # taken up once
    assert (state.slowdown, state.link.uplink_mbps, state.link.downlink_mbps, state.scale) == (10.0, 0.1, 100.0, 1000.0)
    for bad in ({"slowdown": 0.5}, {"scale": 0}, {"scale": "inf"}, {"link": {"bandwidth": 1}}, {"link": {"loss": 1}}):
        time.sleep(0.01)  # a new modification time
        write_injection(tmp_path, "c01", **bad)
        assert not state.changed(), bad
        assert (state.slowdown, state.scale) == (10.0, 1000.0)


def test_an_injected_lie_scales_the_uploaded_step_and_claims_samples_without_touching_the_model(tmp_path):
    base = LinkSpec(name="wifi", downlink_mbps=100.0, uplink_mbps=50.0, latency_ms=4.0)
    state = InjectedState(control_path(tmp_path, "c01"), base)
    fetched = {"w": np.array([1.0, 2.0], np.float32), "n": np.array([3], np.int64)}
    trained = {"w": np.array([3.0, 0.0], np.float32), "n": np.array([4], np.int64)}
    assert state.tampered(trained, fetched) is trained and not state.lies_about_steps  # honest: as trained
    write_injection(tmp_path, "c01", step_scale=0.25, samples=2**62, impersonate="c02")
    assert state.changed() and state.lies_about_steps
    assert (state.samples, state.impersonate) == (2**62, "c02")
    sent = state.tampered(trained, fetched)
    assert sent["w"].tolist() == [1.5, 1.5] and sent["w"].dtype == np.float32  # fetched + 0.25 x step
    assert sent["n"].tolist() == [4] and trained["w"].tolist() == [3.0, 0.0]  # integers as trained; model intact
    for bad in ({"step_scale": -1}, {"samples": 0}, {"samples": 1.5}, {"impersonate": 7}):
        time.sleep(0.01)  # a new modification time
        write_injection(tmp_path, "c01", **bad)
        assert not state.changed(), bad
        assert (state.step_scale, state.samples) == (0.25, 2**62)
