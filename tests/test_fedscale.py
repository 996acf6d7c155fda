"""Tests for FedScale traces as a fleet source (testbed.config.fedscale) and the plain-data unpickler.

The sample traces in tests/data/fedscale/ are hand-made in FedScale's structure, each as a pickle
(integer client ids, as FedScale writes them) and as JSON (string ids). Their figures:

capacity   computation (ms/sample)   communication (kbit/s)
  1               50                      20000
  2              100                       5000
  10             200                       1500
  25             400                        800
  300              2                     100000     (median computation: 100)

behaviour  active            inactive             finish_time   online periods within finish_time
  1021     [0, 3600]         [1800, 5400]         7200          (0, 1800), (3600, 5400)
  2048     [600]             [7800]               7200          (600, 7200): clipped at finish_time
  3077     [100, 200, 5000]  [100, 4000, 9000]    6000          (200, 4000), (5000, 6000): empty one dropped
"""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from testbed.config import (Availability, ClientSpec, dump_scenario, load_link, load_profile, load_scenario,
                            resolve_fleet)
from testbed.config.convert import from_data, to_data
from testbed.config.fedscale import read_behaviour, read_capacity
from testbed.config.safe_pickle import UnsafePickleError, load_plain
from testbed.errors import ConfigError
from testbed.paths import PROJECT_ROOT

DATA = Path(__file__).parent / "data" / "fedscale"
CAPACITY, BEHAVIOUR = DATA / "client_device_capacity", DATA / "client_behave_trace"
CAPACITY_JSON, BEHAVIOUR_JSON = DATA / "client_device_capacity.json", DATA / "client_behave_trace.json"

COMPUTATION = {"1": 50.0, "2": 100.0, "10": 200.0, "25": 400.0, "300": 2.0}  # ms per sample
MBPS = {"1": 20.0, "2": 5.0, "10": 1.5, "25": 0.8, "300": 100.0}  # kbit/s / 1000
SPEED_AT_REFERENCE_50 = {"1": 1.0, "2": 0.5, "10": 0.25, "25": 0.125, "300": 16.0}  # 50 / computation; 25 capped
PERIODS = {  # behaviour id -> (intervals, period_s, online share in the description)
    "1021": (((0.0, 1800.0), (3600.0, 5400.0)), 7200.0, "online 50%"),
    "2048": (((600.0, 7200.0),), 7200.0, "online 92%"),
    "3077": (((200.0, 4000.0), (5000.0, 6000.0)), 6000.0, "online 80%"),
}


def scenario_file(folder: Path, entry: str, *, seed: int = 0, extra: str = "") -> Path:
    path = folder / "s.yaml"
    path.write_text(f"name: t\nseed: {seed}\nfleet:\n  - {entry}\n{extra}")
    return path


def trace_entry(capacity: Path | str = CAPACITY, behaviour: Path | str | None = BEHAVIOUR, *,
                profile: str = "phone_midrange", count: int = 3, more: str = "", options: str = "") -> str:
    behaviour_text = f", behaviour: '{behaviour}'" if behaviour else ""
    return (f"{{profile: {profile}, count: {count}{more}, "
            f"fedscale: {{capacity: '{capacity}'{behaviour_text}{options}}}}}")


def trace_id(spec: ClientSpec) -> str:
    return spec.profile.name.rsplit("-", 1)[1]  # profile names are <base>-fedscale-<trace client id>


def error_of(call, *args) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- reading -------------------------------------------------------------------------------------

def test_pickle_and_json_samples_hold_the_same_traces():
    assert CAPACITY.read_bytes()[:1] == b"\x80" and BEHAVIOUR.read_bytes()[:1] == b"\x80"  # real pickles
    capacity = read_capacity(CAPACITY)
    assert capacity == read_capacity(CAPACITY_JSON)
    assert {cid: (c.ms_per_sample, c.kbps) for cid, c in capacity.items()} == {
        cid: (COMPUTATION[cid], MBPS[cid] * 1000) for cid in COMPUTATION}
    behaviour = read_behaviour(BEHAVIOUR)
    assert behaviour == read_behaviour(BEHAVIOUR_JSON)
    assert {bid: (b.intervals, b.period_s) for bid, b in behaviour.items()} == {
        bid: figures[:2] for bid, figures in PERIODS.items()}


def test_numpy_scalars_in_a_pickle_are_numbers(tmp_path):
    file = tmp_path / "capacity"
    file.write_bytes(pickle.dumps({7: {"computation": np.float64(40.0), "communication": np.float32(2500.0)}}))
    [(cid, capacity)] = read_capacity(file).items()
    assert (cid, capacity.ms_per_sample, capacity.kbps) == ("7", 40.0, 2500.0)
    assert type(capacity.ms_per_sample) is float


class _Payload:
    """Pickles as a call of `function(*args)`: what a malicious trace file would hold."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("function, name", [(os.system, "system"), (eval, "builtins.eval"),
                                            (subprocess.Popen, "subprocess.Popen")])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, function, name):
    marker = tmp_path / "ran"
    command = f"touch {marker}" if function is not eval else f"open({str(marker)!r}, 'w')"
    args = (command,) if function is not subprocess.Popen else (["touch", str(marker)],)
    trace = {1: {"computation": _Payload(function, *args), "communication": 1000.0}}
    data = pickle.dumps(trace)
    with pytest.raises(UnsafePickleError, match=name):
        load_plain(data)
    file = tmp_path / "client_device_capacity"
    file.write_bytes(data)
    message = error_of(load_scenario, scenario_file(tmp_path, trace_entry(file, None, count=1)))
    assert message.startswith(f"{file}: refused to load: the pickle references ") and name in message
    assert "allowed: plain data only" in message
    assert not marker.exists()


def test_plain_data_pickles_load():
    data = {1: [1, 2.5, "x", (3, None), True], "k": {"nested": -1}}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert load_plain(pickle.dumps(data, protocol=protocol)) == data
    assert load_plain(pickle.dumps([b"raw"], protocol=3)) == [b"raw"]


# --- mapping -------------------------------------------------------------------------------------

def test_speed_link_and_base_figures_at_a_reference(tmp_path):
    entry = trace_entry(behaviour=None, profile="rpi4", count=5, options=", reference_ms_per_sample: 50")
    clients = resolve_fleet(load_scenario(scenario_file(tmp_path, entry)))
    base, adsl = load_profile("rpi4"), load_link("adsl")  # rpi4's default link
    assert sorted(trace_id(c) for c in clients) == sorted(COMPUTATION)
    for client in clients:
        cid = trace_id(client)
        assert client.profile.speed == pytest.approx(SPEED_AT_REFERENCE_50[cid])
        assert ("capped at 16" in client.profile.description) == (cid == "300")
        assert client.link.downlink_mbps == client.link.uplink_mbps == pytest.approx(MBPS[cid])
        assert (client.link.latency_ms, client.link.jitter_ms, client.link.loss) == (
            adsl.latency_ms, adsl.jitter_ms, adsl.loss)
        assert client.link.name == f"adsl-fedscale-{cid}" and client.profile.name == f"rpi4-fedscale-{cid}"
        assert (client.profile.cores, client.profile.threads, client.profile.memory_mb, client.profile.max_exit,
                client.profile.failure, client.profile.availability) == (
            base.cores, base.threads, base.memory_mb, base.max_exit, base.failure, base.availability)


def test_median_device_gets_the_profile_speed_and_behaviour_sets_availability(tmp_path):
    clients = resolve_fleet(load_scenario(scenario_file(tmp_path, trace_entry(more=", link: 5g, task: speaker"))))
    base, five_g = load_profile("phone_midrange"), load_link("5g")
    assert base.availability.online_probability < 1  # replaced by the trace, not drawn on top of it
    assert len(clients) == 3 and {c.task for c in clients} == {"speaker"}
    behaviour_ids = set()
    for client in clients:
        cid = trace_id(client)
        assert client.profile.speed == pytest.approx(min(base.speed * 100 / COMPUTATION[cid], 16))  # median: 100
        assert client.link.latency_ms == five_g.latency_ms and client.link.uplink_mbps == pytest.approx(MBPS[cid])
        bid = client.profile.description.split("behaviour trace client ")[1].split(":")[0]
        intervals, period, share = PERIODS[bid]
        assert client.profile.availability == Availability(online_probability=1.0, intervals=intervals,
                                                           period_s=period)
        assert share in client.profile.description
        assert client.profile.failure == base.failure
        behaviour_ids.add(bid)
    assert behaviour_ids == set(PERIODS)  # three drawn from three, without replacement


def test_draw_is_deterministic_seeded_and_the_same_for_pickle_and_json(tmp_path):
    def draw(seed: int, capacity: Path = CAPACITY, behaviour: Path = BEHAVIOUR) -> list:
        folder = tmp_path / f"{seed}-{capacity.name}"
        folder.mkdir(exist_ok=True)
        clients = resolve_fleet(load_scenario(scenario_file(folder, trace_entry(capacity, behaviour), seed=seed)))
        return [(c.profile.name, c.profile.speed, c.link.uplink_mbps, c.profile.availability) for c in clients]

    assert draw(0) == draw(0) == draw(0, CAPACITY_JSON, BEHAVIOUR_JSON)
    draws = {tuple(draw(seed)) for seed in range(6)}
    assert len(draws) > 1  # the seed matters
    assert all(len({name for name, *_ in fleet}) == 3 for fleet in draws)  # no trace client twice


def test_trace_entries_mix_with_profiles_and_ids_stay_unique(tmp_path):
    entry = trace_entry(count=2)
    file = scenario_file(tmp_path, entry, extra=f"  - {{profile: laptop, count: 2}}\n  - {entry}\n")
    scenario = load_scenario(file)
    clients = resolve_fleet(scenario)
    assert [c.client_id for c in clients] == ["c00", "c01", "c02", "c03", "c04", "c05"]
    assert [c.profile.name.split("-")[0] for c in clients] == ["phone_midrange"] * 2 + ["laptop"] * 2 + [
        "phone_midrange"] * 2
    assert sum(entry.count for entry in scenario.fleet) == len(clients)


def test_resolved_scenario_and_client_specs_round_trip(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    shutil.copytree(DATA, exp / "traces")
    monkeypatch.chdir(tmp_path)
    entry = trace_entry("traces/client_device_capacity.json", "traces/client_behave_trace")
    scenario = load_scenario(scenario_file(exp, entry))
    trace = scenario.fleet[0].fedscale
    assert (trace.capacity, trace.behaviour) == (str(exp / "traces" / "client_device_capacity.json"),
                                                 str(exp / "traces" / "client_behave_trace"))  # made absolute
    saved = dump_scenario(scenario, tmp_path / "run" / "scenario.yaml")
    monkeypatch.chdir(tmp_path / "run")
    assert load_scenario(saved) == scenario
    for client in resolve_fleet(scenario):  # as the aggregator's WELCOME carries it to the client
        assert from_data(ClientSpec, to_data(client), source="WELCOME") == client


def test_figures_beyond_the_schema_bounds_are_held_within_them_and_the_client_spec_validates(tmp_path):
    """A device 1000x slower than the reference on a 0.5 kbit/s link: speed and bandwidth at their lower bounds,
    so the ClientSpec a client receives in its WELCOME passes the schema it is checked against."""
    file = tmp_path / "capacity.json"
    file.write_text('{"7": {"computation": 50000, "communication": 0.5}}')
    entry = trace_entry(file, None, count=1, options=", reference_ms_per_sample: 50")
    [client] = resolve_fleet(load_scenario(scenario_file(tmp_path, entry)))
    assert (client.profile.speed, client.link.uplink_mbps, client.link.downlink_mbps) == (0.01, 0.001, 0.001)
    assert "speed 0.001, raised to 0.01 (the profile bound)" in client.profile.description
    assert "0.5 kbit/s" in client.link.source
    assert from_data(ClientSpec, to_data(client), source="WELCOME") == client


# --- errors: one line naming the file and the field ----------------------------------------------

BAD_CAPACITY = [
    ('{"1": {"computation": -5, "communication": 10}}', "client 1.computation",
     ["expected a finite number (ms per sample, > 0)", "-5 (integer)"]),
    ('{"1": {"computation": "fast", "communication": 10}}', "client 1.computation", ["'fast' (string)"]),
    ('{"1": {"computation": NaN, "communication": 10}}', "client 1.computation", ["finite number"]),
    ('{"1": {"computation": 5}}', "client 1.communication", ["missing", "kbit/s"]),
    ('{"1": {"computation": 5, "communication": 0}}', "client 1.communication", ["kbit/s, > 0", "0 (integer)"]),
    ('{"7": 3}', "client 7", ["expected a mapping {computation, communication}", "3 (integer)"]),
    ("[1, 2]", "", ["expected a mapping of client id -> {computation, communication}", "a list"]),
    ("{}", "", ["an empty mapping"]),
    ('{"1": {', "", ["invalid JSON", "line 1"]),
    ("a text file", "", ["neither JSON", "readable pickle"]),
]


@pytest.mark.parametrize("text, path, fragments", BAD_CAPACITY, ids=range(len(BAD_CAPACITY)))
def test_bad_capacity_trace_names_file_client_and_field(tmp_path, text, path, fragments):
    file = tmp_path / "capacity.json"
    file.write_text(text)
    message = error_of(load_scenario, scenario_file(tmp_path, trace_entry(file, None, count=1)))
    assert message.startswith(f"{file}: {path}: " if path else f"{file}: "), message
    for fragment in fragments:
        assert fragment in message, message


def behaviour(active, inactive, finish_time=7200) -> str:
    return f'{{"9": {{"active": {active}, "inactive": {inactive}, "finish_time": {finish_time}}}}}'


BAD_BEHAVIOUR = [
    (behaviour("[0, 10]", "[5]"), "client 9.inactive", ["has 1 times but active has 2"]),
    (behaviour("[50]", "[40]"), "client 9.inactive[0]", ["40 is before active[0] (50)"]),
    (behaviour("[0, 30]", "[50, 60]"), "client 9.active[1]", ["30 is before inactive[0] (50)", "not overlapping"]),
    (behaviour("[-1]", "[5]"), "client 9.active[0]", ["seconds, >= 0", "-1 (integer)"]),
    (behaviour('"0"', "[5]"), "client 9.active", ["expected a list of times", "'0' (string)"]),
    (behaviour("[8000]", "[9000]"), "client 9.active", ["no online period", "finish_time (7200 s)"]),
    (behaviour("[0]", "[5]", "null"), "client 9.finish_time", ["seconds, > 0", "None"]),
    ('{"9": {"active": [0], "inactive": [5]}}', "client 9.finish_time", ["missing"]),
    (behaviour("[0]", "[5]", "1e9"), "client 9.finish_time",
     ["1e+09 is out of range (allowed: 1 <= x <= 31536000) seconds"]),
]


@pytest.mark.parametrize("text, path, fragments", BAD_BEHAVIOUR, ids=range(len(BAD_BEHAVIOUR)))
def test_bad_behaviour_trace_names_file_client_and_field(tmp_path, text, path, fragments):
    file = tmp_path / "behaviour.json"
    file.write_text(text)
    message = error_of(load_scenario, scenario_file(tmp_path, trace_entry(CAPACITY, file, count=1)))
    assert message.startswith(f"{file}: {path}: "), message
    for fragment in fragments:
        assert fragment in message, message


BAD_ENTRIES = [
    (trace_entry("nope/capacity.json"), "fleet[0].fedscale.capacity",
     ["FedScale capacity trace file 'nope/capacity.json' not found", "tried:"]),
    (trace_entry(CAPACITY, "nope/behave"), "fleet[0].fedscale.behaviour",
     ["FedScale behaviour trace file 'nope/behave' not found"]),
    (trace_entry(count=6, behaviour=None), "fleet[0].count",
     ["6 clients asked for", f"capacity trace {CAPACITY} has 5", "allowed: count <= 5"]),
    (trace_entry(count=4), "fleet[0].count", [f"behaviour trace {BEHAVIOUR} has 3", "allowed: count <= 3"]),
    (trace_entry(options=", reference_ms_per_sample: 0"), "fleet[0].fedscale.reference_ms_per_sample",
     ["0.001 <= x <= 1000000"]),
    (trace_entry(options=", capcity: x"), "fleet[0].fedscale.capcity",
     ["unknown key 'capcity'", "capacity, behaviour, reference_ms_per_sample"]),
    ("{profile: laptop, fedscale: {behaviour: x}}", "fleet[0].fedscale.capacity", ["is required", "a string"]),
]


@pytest.mark.parametrize("entry, path, fragments", BAD_ENTRIES, ids=range(len(BAD_ENTRIES)))
def test_bad_trace_entry_names_scenario_and_field(tmp_path, entry, path, fragments):
    file = scenario_file(tmp_path, entry)
    message = error_of(load_scenario, file)
    assert message.startswith(f"{file}: {path}: "), message
    for fragment in fragments:
        assert fragment in message, message


# --- Availability.intervals in profiles ----------------------------------------------------------

PROFILE = "name: dev\n"


def test_profile_with_listed_online_periods(tmp_path):
    file = tmp_path / "dev.yaml"
    file.write_text(PROFILE + "availability: {intervals: [[0, 600], [1200, 1800.5]], period_s: 3600}\n")
    availability = load_profile(file).availability
    assert availability.intervals == ((0.0, 600.0), (1200.0, 1800.5)) and availability.period_s == 3600.0


BAD_AVAILABILITY = [
    ("{intervals: [[5, 3]]}", "intervals[0]", ["end_s 3 is not after start_s 5"]),
    ("{intervals: [[0, 10], [5, 20]]}", "intervals[1]", ["starts at 5 s, before the previous period ends (10 s)"]),
    ("{intervals: [[0, 1, 2]]}", "intervals[0]", ["expected [start_s, end_s], got 3 numbers"]),
    ("{intervals: [[-1, 2]]}", "intervals[0][0]", ["0 <= x <= 31536000"]),
    ("{intervals: []}", "intervals", ["must not be empty"]),
    ("{intervals: [[0, 10]], period_s: 5}", "period_s", ["5 is shorter than the intervals (last end_s 10)"]),
    ("{period_s: 5}", "period_s", ["only goes with intervals"]),
    ("{intervals: [[0, 10]], online_s: 5, offline_s: 5}", "intervals", ["either intervals or online_s/offline_s"]),
]


@pytest.mark.parametrize("text, path, fragments", BAD_AVAILABILITY, ids=range(len(BAD_AVAILABILITY)))
def test_bad_availability_intervals(tmp_path, monkeypatch, text, path, fragments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dev.yaml").write_text(PROFILE + f"availability: {text}\n")
    message = error_of(load_profile, "./dev.yaml")
    assert message.startswith(f"dev.yaml: availability.{path}: "), message
    for fragment in fragments:
        assert fragment in message, message


# --- command line --------------------------------------------------------------------------------

def test_testbed_validate_a_trace_scenario(tmp_path):
    good = scenario_file(tmp_path, trace_entry(), extra="  - {profile: laptop}\n")
    bad_trace = tmp_path / "bad.json"
    bad_trace.write_text('{"3": {"computation": 10}}')
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: b\nfleet:\n  - {trace_entry(bad_trace, None, count=1)}\n")
    result = subprocess.run([sys.executable, "-m", "testbed", "validate", str(good), str(bad)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == f"ok  {good} (scenario 't': 4 clients, 4 profiles, 4 links)\n"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0] == (f"testbed validate: error: {bad_trace}: client 3.communication: "
                        "missing (expected a number: kbit/s, > 0)")
