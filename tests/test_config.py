"""Tests for testbed.config: schema rules, loading, `--set` overrides, shipped YAML, validate/profiles."""

import argparse
import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.config import (LinkSpec, Profile, Scenario, apply_overrides, dump_scenario, load_link,
                            load_profile, load_scenario, resolve_fleet, scenario_to_dict)
from testbed.config import commands
from testbed.config.convert import from_data, setting, to_data
from testbed.errors import ConfigError
from testbed.paths import PROJECT_ROOT, profiles_dir

SCENARIOS = sorted((PROJECT_ROOT / "scenarios").glob("*.yaml"))
PROFILES = sorted(profiles_dir().glob("*.yaml"))
LINKS = sorted((profiles_dir() / "links").glob("*.yaml"))
FLEET = "fleet:\n  - profile: laptop\n"
MINIMAL = "name: t\n" + FLEET


def write(folder: Path, text: str, name: str = "s.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def assert_names(message: str, source: str, path: str, fragments) -> None:
    assert message.startswith(f"{source}: {path}: " if path else f"{source}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- bad scenarios: each error names the file, the field path and what is allowed ------------

BAD_SCENARIOS = [
    ("name: t\nroundz: 3\n" + FLEET, "roundz", ["unknown key 'roundz'", "rounds", "deadline_s", "fleet"]),
    ("name: t\nbackbone: {exit: [2]}\n" + FLEET, "backbone.exit", ["unknown key 'exit'", "exits", "family"]),
    ("name: t\nfleet: [{profile: laptop, cnt: 2}]\n", "fleet[0].cnt", ["unknown key 'cnt'", "count", "task"]),
    ("name: t\nrounds: ten\n" + FLEET, "rounds", ["expected an integer (1 <= x <= 1000000)", "'ten' (string)"]),
    ("name: t\nrounds: true\n" + FLEET, "rounds", ["expected an integer (1 <= x <= 1000000)", "true (boolean)"]),
    ("name: t\nrounds: 2.5\n" + FLEET, "rounds", ["expected an integer", "2.5 (number)"]),
    ("name: t\nrounds: 0\n" + FLEET, "rounds", ["0 is out of range", "allowed: 1 <= x <= 1000000"]),
    ("name: t\ndeadline_s: -1\n" + FLEET, "deadline_s", ["-1 is out of range", "1 <= x <= 86400"]),
    ("name: t\ndeadline_s: true\n" + FLEET, "deadline_s", ["expected a number (1 <= x <= 86400)", "true (boolean)"]),
    ("name: t\ndeadline_s: yes\n" + FLEET, "deadline_s", ["expected a number (1 <= x <= 86400)", "'yes' (string)"]),
    ("name: t\ndeadline_s: .nan\n" + FLEET, "deadline_s", ["finite number"]),
    ("name: t\nstrategy: {name: fedprox}\n" + FLEET, "strategy.name",
     ["unknown strategy 'fedprox'", "fedavg_full", "fedavg_drop", "layerwise", "depth_aware", "depthfl"]),
    ("name: t\nstrategy: {weighting: depth}\n" + FLEET, "strategy.weighting", ["samples_depth, samples"]),
    ("name: t\nexit_policy: {name: greedy}\n" + FLEET, "exit_policy.name",
     ["unknown exit policy 'greedy'", "static, budget, task, adaptive"]),
    ("name: t\nfleet: [{profile: laptop, task: emotion}]\n", "fleet[0].task",
     ["unknown task 'emotion'", "keyword, speaker"]),
    ("name: t\nfleet: [{profile: laptop}, {profile: rpi4}, {profile: rpi9}]\n", "fleet[2].profile",
     ["unknown profile 'rpi9'", "jetson_orin_nano, laptop, phone_midrange, rpi4, rpi5, workstation"]),
    ("name: t\nfleet: [{profile: laptop, link: 6g}]\n", "fleet[0].link",
     ["unknown link '6g'", "4g, 5g, adsl, satellite, wifi"]),
    ("name: t\nfleet: [{profile: nowhere/dev.yaml}]\n", "fleet[0].profile",
     ["profile file 'nowhere/dev.yaml' not found", "tried:"]),
    ("name: t\nfleet: []\n", "fleet", ["must not be empty", "a list"]),
    ("name: t\n", "fleet", ["is required", "a list (items: a mapping (keys: profile, count, task, link, fedscale, node))"]),
    ("name: t\nfleet: laptop\n", "fleet", ["expected a list", "'laptop' (string)"]),
    ("name: t\nfleet: [{profile: laptop, count: 0}]\n", "fleet[0].count", ["1 <= x <= 1024"]),
    ("name: t\nfleet: [{count: 2}]\n", "fleet[0].profile", ["is required", "a string"]),
    ("name: t\nbackbone: {exits: [4, 2]}\n" + FLEET, "backbone.exits", ["strictly increasing", "[4, 2]"]),
    ("name: t\nbackbone: {exits: [0, 2]}\n" + FLEET, "backbone.exits[0]", ["0 is out of range", "1 <= x <= 128"]),
    ("name: t\nbackbone: {exits: []}\n" + FLEET, "backbone.exits", ["must not be empty"]),
    ("name: t\nbackbone: {family: whisper}\n" + FLEET, "backbone.family", ["wav2vec2, hubert, wavlm"]),
    ("name: t\nbackbone: {pretrained: 1}\n" + FLEET, "backbone.pretrained", ["expected true or false"]),
    ("name: t\nexit_policy: {preferred_exits: {emotion: 2}}\n" + FLEET, "exit_policy.preferred_exits.emotion",
     ["unknown key 'emotion'", "keyword, speaker"]),
    ("name: t\nexit_policy: {preferred_exits: {keyword: fast}}\n" + FLEET, "exit_policy.preferred_exits.keyword",
     ["unknown value 'fast'", "allowed: an integer (1 <= x <= 128) or one of auto"]),
    ("name: t\nexit_policy: {preferred_exits: {keyword: 0}}\n" + FLEET, "exit_policy.preferred_exits.keyword",
     ["1 <= x <= 128"]),
    ("name: t\nexit_policy: {ema: 1.5}\n" + FLEET, "exit_policy.ema", ["0.01 <= x <= 1"]),
    ("name: t\ndata: {source: fsdd}\n" + FLEET, "data.path", ["required when source is 'fsdd'"]),
    ("name: t\ndata: {source: librispeech}\n" + FLEET, "data.source",
     ["unknown data source", "builtin, speech_commands, manifest, fsdd"]),
    ("name: t\ndata: {partition: random}\n" + FLEET, "data.partition", ["speaker, dirichlet, iid"]),
    ("name: t\ndata: {clip_seconds: 20}\n" + FLEET, "data.clip_seconds", ["0.1 <= x <= 10"]),
    ("name: t\ndata: {test_speaker_fraction: 1}\n" + FLEET, "data.test_speaker_fraction", ["0.01 <= x <= 0.9"]),
    ("name: t\ndata: {words: []}\n" + FLEET, "data.words", ["must not be empty"]),
    ("name: t\ndata: {takes: 0}\n" + FLEET, "data.takes", ["1 <= x <= 30"]),
    ("name: t\ndata: {source: fsdd, path: d, takes: 6}\n" + FLEET, "data.takes",
     ["only shapes the built-in corpus", "'fsdd' corpus has the takes it was recorded with"]),
    ("name: t\ntraining: 5\n" + FLEET, "training", ["expected a mapping (keys: local_steps, batch_size"]),
    ("name: t\ntraining: {learning_rate: 0}\n" + FLEET, "training.learning_rate", ["0 < x <= 10"]),
    ("name: t\ntraining: {loss: mse}\n" + FLEET, "training.loss", ["all_exits, deepest, self_distill"]),
    ("name: a/b\n" + FLEET, "name", ["letters, digits"]),
    ("name: t\nseed: -1\n" + FLEET, "seed", ["0 <= x <= 4294967295"]),
]


@pytest.mark.parametrize("text, path, fragments", BAD_SCENARIOS, ids=[case[1] for case in BAD_SCENARIOS])
def test_bad_scenario_names_file_path_and_allowed(tmp_path, text, path, fragments):
    file = write(tmp_path, text)
    assert_names(error_of(load_scenario, file), str(file), path, fragments)


BAD_FILES = [
    ("name: [t\n", ["invalid YAML", "line 2"]),
    ("- name: t\n", ["top level must be a mapping", "a list"]),
    ("", ["top level must be a mapping", "empty file"]),
    ("name: a\nname: b\n" + FLEET, ["duplicate key 'name'", "line 2"]),
]


@pytest.mark.parametrize("text, fragments", BAD_FILES, ids=["yaml", "list", "empty", "duplicate"])
def test_bad_file_names_file(tmp_path, text, fragments):
    file = write(tmp_path, text)
    assert_names(error_of(load_scenario, file), str(file), "", fragments)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_names(error_of(load_scenario, missing), str(missing), "", ["file not found"])


PROFILE = "name: dev\nspeed: 0.5\ncores: 2\nthreads: 2\n"
BAD_PROFILES = [
    (PROFILE.replace("0.5", "0"), "speed", ["0 is out of range", "0.01 <= x <= 16"]),
    (PROFILE.replace("0.5", "20"), "speed", ["0.01 <= x <= 16"]),
    (PROFILE + "memory_mb: 32\n", "memory_mb", ["64 <= x <= 1048576"]),
    (PROFILE + "memory_mb: 1.5e3\n", "memory_mb", ["expected an integer", "1500.0 (number)"]),
    (PROFILE.replace("threads: 2", "threads: 4"), "threads", ["threads <= cores"]),
    (PROFILE + "max_exit: 0\n", "max_exit", ["1 <= x <= 128"]),
    (PROFILE + "link: 6g\n", "link", ["unknown link '6g'", "4g, 5g, adsl, satellite, wifi"]),
    (PROFILE + "availability: {online_probability: 1.5}\n", "availability.online_probability", ["0 <= x <= 1"]),
    (PROFILE + "availability: {online_s: 10}\n", "availability.offline_s", ["go together"]),
    (PROFILE + "failure: {crash_rate: -0.1}\n", "failure.crash_rate", ["0 <= x <= 1"]),
    (PROFILE + "failure: {freeze_s: 0}\n", "failure.freeze_s", ["0 < x <= 86400"]),
    (PROFILE.replace("name: dev", "name: other"), "name", ["'other' must equal the file name ('dev')"]),
    (PROFILE + "gpu: true\n", "gpu", ["unknown key 'gpu'", "cores, threads, speed"]),
]


@pytest.mark.parametrize("text, path, fragments", BAD_PROFILES, ids=[case[1] for case in BAD_PROFILES])
def test_bad_profile(tmp_path, monkeypatch, text, path, fragments):
    monkeypatch.chdir(tmp_path)  # errors name files relative to the working directory
    write(tmp_path, text, "dev.yaml")
    assert_names(error_of(load_profile, "./dev.yaml"), "dev.yaml", path, fragments)


LINK = "name: net\ndownlink_mbps: 10\nuplink_mbps: 2\nlatency_ms: 30\n"
BAD_LINKS = [
    (LINK + "loss: 1.0\n", "loss", ["0 <= x <= 0.5"]),
    (LINK.replace("downlink_mbps: 10\n", ""), "downlink_mbps", ["is required", "a number (0.001 <= x <= 100000)"]),
    (LINK.replace("2", "fast"), "uplink_mbps", ["expected a number (0.001 <= x <= 100000)", "'fast' (string)"]),
    (LINK + "jitter_ms: -1\n", "jitter_ms", ["0 <= x <= 60000"]),
]


@pytest.mark.parametrize("text, path, fragments", BAD_LINKS, ids=[case[1] for case in BAD_LINKS])
def test_bad_link(tmp_path, monkeypatch, text, path, fragments):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text, "net.yaml")
    assert_names(error_of(load_link, "net.yaml"), "net.yaml", path, fragments)


def test_scenario_reports_the_bad_profile_file_it_uses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, PROFILE.replace("0.5", "-1"), "devices/dev.yaml")
    scenario = write(tmp_path, "name: t\nfleet: [{profile: devices/dev.yaml}]\n")
    assert_names(error_of(load_scenario, scenario), "devices/dev.yaml", "speed", ["0.01 <= x <= 16"])


# --- shipped files -------------------------------------------------------------------------------

@pytest.mark.parametrize("file", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_load_and_round_trip(file, tmp_path, monkeypatch):
    scenario = load_scenario(file)
    data = scenario_to_dict(scenario)
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain data only
    assert from_data(Scenario, data, source="dict") == scenario
    saved = dump_scenario(scenario, tmp_path / "run" / "scenario.yaml")
    monkeypatch.chdir(tmp_path)  # a saved scenario loads the same from anywhere
    assert load_scenario(saved) == scenario


def test_shipped_files_exist():
    assert {p.stem for p in SCENARIOS} >= {"smoke", "mixed_fleet", "homogeneous"}
    assert {p.stem for p in PROFILES} == {"rpi4", "rpi5", "jetson_orin_nano", "phone_midrange", "laptop",
                                          "workstation"}
    assert {p.stem for p in LINKS} == {"4g", "5g", "wifi", "adsl", "satellite"}


@pytest.mark.parametrize("file", PROFILES, ids=lambda p: p.stem)
def test_shipped_profiles(file):
    profile = load_profile(file.stem)
    assert profile == load_profile(file)
    assert profile.source and "Geekbench 5" in file.read_text() and "1150" in file.read_text()
    assert load_link(profile.link).name == profile.link


@pytest.mark.parametrize("file", LINKS, ids=lambda p: p.stem)
def test_shipped_links(file):
    assert load_link(file.stem).source


def test_shipped_figures():
    caps = {name: load_profile(name).max_exit for name in
            ("rpi4", "rpi5", "phone_midrange", "jetson_orin_nano", "laptop", "workstation")}
    assert caps == {"rpi4": 1, "rpi5": 2, "phone_midrange": 2, "jetson_orin_nano": 3, "laptop": None,
                    "workstation": None}
    assert load_profile("rpi4").speed < load_profile("rpi5").speed < load_profile("laptop").speed
    assert load_profile("phone_midrange").availability.online_probability < 1.0
    assert load_profile("workstation").availability.online_probability == 1.0


def test_mixed_fleet_is_mixed():
    clients = resolve_fleet(load_scenario(PROJECT_ROOT / "scenarios" / "mixed_fleet.yaml"))
    assert len(clients) >= 8
    assert len({c.profile.name for c in clients}) >= 4 and len({c.link.name for c in clients}) >= 3
    assert {c.task for c in clients} == {"keyword", "speaker"}


# --- fleet, defaults, immutability ---------------------------------------------------------------

def test_resolve_fleet_ids_and_links(tmp_path):
    file = write(tmp_path, "name: t\nfleet:\n  - {profile: rpi4, count: 2}\n"
                           "  - {profile: laptop, task: speaker, link: 4g}\n  - {profile: phone_midrange}\n")
    clients = resolve_fleet(load_scenario(file))
    assert [c.client_id for c in clients] == ["c00", "c01", "c02", "c03"]
    assert [(c.profile.name, c.link.name, c.task) for c in clients] == [
        ("rpi4", "adsl", "keyword"), ("rpi4", "adsl", "keyword"), ("laptop", "4g", "speaker"),
        ("phone_midrange", "4g", "keyword")]
    assert resolve_fleet(load_scenario(file)) == clients  # deterministic


def test_resolve_fleet_widens_ids(tmp_path):
    file = write(tmp_path, "name: t\nfleet: [{profile: laptop, count: 100}, {profile: rpi4, count: 20}]\n")
    ids = [c.client_id for c in resolve_fleet(load_scenario(file))]
    assert ids[0] == "c000" and ids[-1] == "c119" and ids == sorted(set(ids))


def test_paths_relative_to_scenario_then_cwd(tmp_path, monkeypatch):
    write(tmp_path, PROFILE.replace("name: dev", "name: box"), "exp/devices/box.yaml")
    write(tmp_path, LINK, "shared/net.yaml")
    monkeypatch.chdir(tmp_path)
    file = write(tmp_path / "exp", "name: t\nfleet: [{profile: devices/box.yaml, link: shared/net.yaml}]\n")
    entry = load_scenario(file).fleet[0]
    assert Path(entry.profile) == tmp_path / "exp" / "devices" / "box.yaml"  # made absolute
    assert Path(entry.link) == tmp_path / "shared" / "net.yaml"
    [client] = resolve_fleet(load_scenario(file))
    assert (client.profile.name, client.link.name) == ("box", "net")


def test_a_scenario_given_as_a_mapping_is_named_by_its_source(tmp_path, monkeypatch):
    write(tmp_path, PROFILE.replace("name: dev", "name: box"), "exp/devices/box.yaml")
    monkeypatch.chdir(tmp_path)
    raw = {"name": "t", "fleet": [{"profile": "devices/box.yaml", "count": 2}]}
    scenario = load_scenario(raw, ["rounds=3"], source="stress.yaml: scenario.inline", base_dir=tmp_path / "exp")
    assert scenario.rounds == 3 and Path(scenario.fleet[0].profile) == tmp_path / "exp" / "devices" / "box.yaml"
    assert raw == {"name": "t", "fleet": [{"profile": "devices/box.yaml", "count": 2}]}  # not changed
    with pytest.raises(ConfigError) as caught:
        load_scenario({**raw, "fleet": [{"profile": "laptop", "count": 0}]}, source="stress.yaml: scenario.inline")
    assert str(caught.value).startswith("stress.yaml: scenario.inline: fleet[0].count: 0 is out of range")
    with pytest.raises(ConfigError, match=r"^inline: fleet\[0\]\.profile: profile file 'devices/box.yaml' not found"):
        load_scenario(raw, source="inline")  # relative to the working directory alone
    with pytest.raises(TypeError, match="needs a source"):
        load_scenario(raw)


def test_data_path_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp" / "corpus").mkdir(parents=True)
    file = write(tmp_path / "exp", "name: t\ndata: {source: fsdd, path: corpus}\n" + FLEET)
    assert load_scenario(file).data.path == str(tmp_path / "exp" / "corpus")  # scenario dir first
    assert load_scenario(file, ["data.path=elsewhere"]).data.path == str(tmp_path / "elsewhere")  # then cwd


def test_defaults_obey_their_own_rules(tmp_path):
    scenario = load_scenario(write(tmp_path, MINIMAL))
    assert from_data(Scenario, scenario_to_dict(scenario), source="defaults") == scenario
    assert from_data(Profile, to_data(Profile(name="p")), source="defaults") == Profile(name="p")
    assert scenario.strategy.name == "depth_aware" and scenario.fleet[0].count == 1


def test_a_run_ends_when_its_rounds_are_done_or_its_time_budget_is_spent(tmp_path):
    by_rounds = load_scenario(write(tmp_path, MINIMAL), ["rounds=3"])
    assert by_rounds.ending(2, 1e9) is None  # no budget: seconds do not count
    assert by_rounds.ending(3, 0.0) == "rounds done"
    by_time = load_scenario(write(tmp_path, MINIMAL), ["rounds=3", "time_budget_s=100"])
    assert by_time.ending(1, 99.9) is None
    assert by_time.ending(1, 100.0) == "time budget spent (100.0 of 100 s in 1 rounds)"
    assert by_time.ending(0, 120.0, clock="host s") == "time budget spent (120.0 of 100 host s in 0 rounds)"
    assert by_time.ending(3, 50.0) == "rounds done"


def test_config_is_frozen_hashable_and_picklable(tmp_path):
    scenario = load_scenario(write(tmp_path, MINIMAL), ["exit_policy.preferred_exits.keyword=2"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.rounds = 3
    with pytest.raises(TypeError):
        scenario.exit_policy.preferred_exits["speaker"] = 1
    assert hash(scenario) == hash(pickle.loads(pickle.dumps(scenario)))
    assert pickle.loads(pickle.dumps(scenario)) == scenario
    with pytest.raises(TypeError):
        LinkSpec("wifi")  # keyword-only


def test_setting_rejects_unknown_rules():
    with pytest.raises(TypeError, match="unknown field rule"):
        setting(1, minimum=0)


def test_exponent_floats_and_int_for_float(tmp_path):
    text = "name: t\ndeadline_s: 30\ntraining: {learning_rate: 1e-3}\n" + FLEET
    scenario = load_scenario(write(tmp_path, text))
    assert scenario.training.learning_rate == 0.001 and isinstance(scenario.deadline_s, float)


# --- overrides -----------------------------------------------------------------------------------

def test_overrides_apply(tmp_path):
    file = write(tmp_path, MINIMAL)
    scenario = load_scenario(file, ["rounds=5", "backbone.exits=[2, 4]", "fleet.0.count=3",
                                    "fleet[0].task=speaker", "exit_policy.preferred_exits={keyword: auto}"])
    assert (scenario.rounds, scenario.backbone.exits) == (5, (2, 4))
    assert (scenario.fleet[0].count, scenario.fleet[0].task) == (3, "speaker")
    assert scenario.exit_policy.preferred_exits == {"keyword": "auto"}


def test_apply_overrides_copies():
    raw = {"name": "t", "fleet": [{"profile": "laptop"}]}
    result = apply_overrides(raw, ["fleet[0].count=2", "strategy.name=layerwise"])
    assert result == {"name": "t", "fleet": [{"profile": "laptop", "count": 2}],
                      "strategy": {"name": "layerwise"}}
    assert raw == {"name": "t", "fleet": [{"profile": "laptop"}]}


BAD_OVERRIDES = [
    ("rounds", "", ["expected KEY=VALUE"]),
    ("=5", "", ["expected KEY=VALUE"]),
    ("roundz=5", "roundz", ["unknown key 'roundz'", "rounds, deadline_s"]),
    ("strategy.nmae=x", "strategy.nmae", ["unknown key 'nmae'", "name, weighting"]),
    ("fleet[3].count=1", "fleet[3]", ["index out of range (allowed: 0..0)"]),
    ("fleet.count=1", "fleet.count", ["index it, e.g. fleet[0]"]),
    ("rounds.x=1", "rounds.x", ["single value"]),
    ("fleet..count=1", "fleet..count", ["malformed key"]),
    ("backbone.exits=[2", "backbone.exits", ["invalid YAML"]),
    ("rounds=0", "rounds", ["0 is out of range", "1 <= x <= 1000000"]),
    ("strategy.name=fedprox", "strategy.name", ["unknown strategy 'fedprox'", "depth_aware"]),
    ("fleet.0.profile=rpi9", "fleet[0].profile", ["unknown profile 'rpi9'", "laptop"]),
    ("backbone={exits: [3, 1]}", "backbone.exits", ["strictly increasing"]),
]


@pytest.mark.parametrize("override, path, fragments", BAD_OVERRIDES, ids=[case[0] for case in BAD_OVERRIDES])
def test_bad_override_names_set(tmp_path, override, path, fragments):
    assert_names(error_of(load_scenario, write(tmp_path, MINIMAL), [override]), "--set", path, fragments)


def test_error_outside_overrides_still_names_the_file(tmp_path):
    file = write(tmp_path, "name: t\nrounds: 0\n" + FLEET)
    assert_names(error_of(load_scenario, file, ["seed=3"]), str(file), "rounds", ["1 <= x <= 1000000"])


# --- command line --------------------------------------------------------------------------------

def test_detect_kind(tmp_path):
    assert commands.detect_kind(write(tmp_path, MINIMAL, "a.yaml")) is Scenario
    assert commands.detect_kind(write(tmp_path, PROFILE, "b.yaml")) is Profile
    assert commands.detect_kind(write(tmp_path, LINK, "c.yaml")) is LinkSpec
    assert commands.detect_kind(write(tmp_path, "name: x\n", "links/d.yaml")) is LinkSpec


def test_validate_shipped_files(capsys):
    files = [str(p.relative_to(PROJECT_ROOT)) for p in SCENARIOS + PROFILES + LINKS]
    args = argparse.Namespace(files=[str(PROJECT_ROOT / f) for f in files], overrides=["rounds=3"])
    assert commands.validate(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(files) and all(line.startswith("ok  ") for line in out)
    assert any("(scenario 'smoke': 3 clients, 3 profiles, 1 link)" in line for line in out)


def test_profiles_lists_every_profile_and_link(capsys):
    assert commands.profiles(argparse.Namespace()) == 0
    out = capsys.readouterr().out
    for path in PROFILES + LINKS:
        assert path.stem in out


def test_cli_bad_file_is_one_line_exit_2(tmp_path):
    bad = write(tmp_path, "name: t\nfleet: [{profile: laptop}, {profile: rpi4}, {profile: rpi9}]\n")
    good = PROJECT_ROOT / "scenarios" / "smoke.yaml"
    result = subprocess.run([sys.executable, "-m", "testbed", "validate", str(good), str(bad)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout.startswith(f"ok  {good} (scenario 'smoke'")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{bad}: fleet[2].profile: unknown profile 'rpi9' (allowed: jetson_orin_nano, laptop" in lines[0]


def test_speech_commands_words_stay_words_not_booleans(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ndata: {words: [yes, no, on, off]}\n" + FLEET)
    assert load_scenario(path).data.words == ("yes", "no", "on", "off")


def test_version_and_a_stress_file_recognised_by_validate():
    from testbed import __version__

    version = subprocess.run([sys.executable, "-m", "testbed", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"testbed {__version__}"
    stress = PROJECT_ROOT / "scenarios" / "stress" / "client_killed.yaml"
    checked = subprocess.run([sys.executable, "-m", "testbed", "validate", str(stress)], capture_output=True, text=True)
    assert checked.returncode == 0 and "stress test 'client_killed'" in checked.stdout, checked.stderr
