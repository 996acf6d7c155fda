"""Issue 16, classes 8 and 9: every value that validates can run; a bad file is one line, never a traceback.

Class 8: numbers no experiment can use (a deadline of 1e300 s, a bandwidth of 1e-300 Mbit/s, exits
below a backbone's depth...) are refused by `testbed validate` with one line naming the field and its
range. Class 9: deep nesting, huge counts, huge or hostile files end as one line too, and an error
about a file never quotes the file. The property-based tests draw a value for every numeric field of
the schema: `validate` refuses it with one line or accepts it, and an accepted value runs to a
finished run with updates or a clearly failed one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runs import alive, events, testbed_command as command_of
from testbed.cli import main as cli_main
from testbed.config.convert import fields_of, join_path, members, strip_none
from testbed.config.schema import LinkSpec, Profile, Scenario
from testbed.config.yamlio import StrictLoader
from testbed.paths import PROJECT_ROOT

TRACES = Path(__file__).parent / "data" / "fedscale"
BASE = "name: t\nbackbone: {name: debug}\nfleet: [{profile: laptop, count: 2}]\n"


def validate(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    """`testbed validate ARGS` as a user runs it: its own process."""
    return subprocess.run(command_of("validate", *args), cwd=cwd, capture_output=True, text=True, timeout=120)


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one line `testbed validate` refused with (exit code 2, nothing else on stderr)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stdout, result.stderr)
    assert lines[0].startswith("testbed validate: error: "), lines[0]
    return lines[0].removeprefix("testbed validate: error: ")


def base_scenario(folder: Path, text: str = BASE) -> Path:
    path = folder / "s.yaml"
    path.write_text(text)
    return path


# --- class 8: numbers no experiment can use -----------------------------------------------------

SET_REFUSED = [  # --set KEY=VALUE on BASE (debug backbone: 2 layers, exits at 1 and 2) -> the line
    ("deadline_s=1e300", "--set: deadline_s: 1e+300 is out of range (allowed: 1 <= x <= 86400)"),
    ("deadline_s=1" + "0" * 400, "--set: deadline_s: an integer of about 401 digits is out of range "
                                 "(allowed: 1 <= x <= 86400)"),
    ("emulation.dilation=1e308", "--set: emulation.dilation: 1e+308 is out of range (allowed: 1 <= x <= 1000)"),
    ("training.batch_size=100000000000",
     "--set: training.batch_size: 100000000000 is out of range (allowed: 1 <= x <= 4096)"),
    ("seed=18446744073709551616", "--set: seed: 18446744073709551616 is out of range (allowed: 0 <= x <= 4294967295)"),
    ("backbone.exits=[1, 3]", "--set: backbone.exits[1]: layer 3 is beyond the 2 layers of backbone 'debug' "
                              "(allowed: 1 <= x <= 2)"),
    ("exit_policy.preferred_exits={keyword: 3}",
     "--set: exit_policy.preferred_exits.keyword: exit 3 is beyond the 2 exits of backbone 'debug' "
     "(exits at layers 1, 2) (allowed: 1 <= x <= 2 or auto)"),
    ("fleet[0].count=1000000000", "--set: fleet[0].count: 1000000000 is out of range (allowed: 1 <= x <= 1024)"),
]


@pytest.mark.parametrize("override, line", SET_REFUSED, ids=[case[0][:40] for case in SET_REFUSED])
def test_validate_refuses_values_no_experiment_can_use(tmp_path, override, line):
    assert refusal(validate(str(base_scenario(tmp_path)), "--set", override)) == line


def test_exits_beyond_the_tiny_backbone_are_refused_from_the_file(tmp_path):
    file = base_scenario(tmp_path, BASE.replace("{name: debug}", "{name: tiny, exits: [2, 4, 9]}"))
    assert refusal(validate(str(file))) == (f"{file}: backbone.exits[2]: layer 9 is beyond the 8 layers of "
                                            "backbone 'tiny' (allowed: 1 <= x <= 8)")


def test_a_fleet_beyond_what_a_launcher_can_start_is_refused(tmp_path):
    file = base_scenario(tmp_path, BASE.replace("count: 2}]", "count: 1000}, {profile: rpi4, count: 1000}]"))
    assert refusal(validate(str(file))) == f"{file}: fleet: 2000 clients in all (allowed: at most 1024)"


DEVICE_REFUSED = [  # (file name, YAML text) of a profile or link the scenario uses -> the line's end
    ("dev.yaml", "name: dev\nspeed: 1e-300\n", "speed: 1e-300 is out of range (allowed: 0.01 <= x <= 16)"),
    ("net.yaml", "name: net\ndownlink_mbps: 1e-300\nuplink_mbps: 1\nlatency_ms: 10\n",
     "downlink_mbps: 1e-300 is out of range (allowed: 0.001 <= x <= 100000)"),
    ("net.yaml", "name: net\ndownlink_mbps: 10\nuplink_mbps: 1\nlatency_ms: 1e300\n",
     "latency_ms: 1e+300 is out of range (allowed: 0 <= x <= 60000)"),
]


@pytest.mark.parametrize("name, text, end", DEVICE_REFUSED, ids=["speed", "bandwidth", "latency"])
def test_validate_refuses_device_figures_no_device_has(tmp_path, name, text, end):
    file = tmp_path / name
    file.write_text(text)
    entry = f"{{profile: {file}}}" if name == "dev.yaml" else f"{{profile: laptop, link: {file}}}"
    scenario = base_scenario(tmp_path, f"name: t\nfleet: [{entry}]\n")
    assert refusal(validate(str(scenario))) == f"{file}: {end}"


def test_a_local_checkpoint_is_checked_by_its_config_and_an_unknown_one_said_unchecked(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "hubert", "num_hidden_layers": 3}')
    file = base_scenario(tmp_path, BASE.replace("{name: debug}", f"{{name: '{checkpoint}', exits: [2, 4]}}"))
    assert refusal(validate(str(file))) == (f"{file}: backbone.exits[1]: layer 4 is beyond the 3 layers of "
                                            f"backbone '{checkpoint}' (allowed: 1 <= x <= 3)")
    elsewhere = base_scenario(tmp_path, BASE.replace("{name: debug}", "{name: no-such-org/no-such-model}"))
    result = validate(str(elsewhere))
    assert result.returncode == 0 and result.stdout == (
        f"ok  {elsewhere} (scenario 't': 2 clients, 1 profile, 1 link; exits not checked: backbone "
        "'no-such-org/no-such-model' is neither a preset, a local directory nor in the Hugging Face cache "
        "(a run checks them once it has loaded it))\n"), result


def test_a_fleet_this_host_cannot_carry_is_refused_before_any_process_starts(tmp_path, cache):
    """Two devices of 256 cores at 16x a host core each, emulated on 2 host cores under the real clock: a time
    dilation of 5461 (the event clock has none: it bills such a fleet's compute instead of waiting for it)."""
    (tmp_path / "big.yaml").write_text("name: big\nspeed: 16\ncores: 256\nthreads: 256\n")
    file = base_scenario(tmp_path, "name: t\nbackbone: {name: debug}\nemulation: {clock: real, host_cores: 2}\n"
                                   f"fleet: [{{profile: {tmp_path / 'big.yaml'}, count: 2}}]\n")
    out = tmp_path / "out"
    result = subprocess.run(command_of("run", str(file), "--out", str(out)), capture_output=True, text=True,
                            timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0] == ("testbed run: error: scenario 't': its fleet needs a time dilation of 5461 on 2 host cores "
                        "(allowed: at most 1000, as a round of deadline D s takes D x dilation wall seconds): select "
                        "fewer clients per round (strategy.clients_per_round), fewer or slower clients, or run on "
                        "more cores")
    assert not (out / "processes.json").exists() and not (out / "events.jsonl").exists()


def _numeric_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, Mapping]]:
    """(path, leaf type, rules) of every numeric field of a config dataclass, nested ones included."""
    for name, (field_type, rules) in fields_of(cls).items():
        path, inner = join_path(prefix, name), strip_none(field_type)
        if "like" in rules:  # a mapping whose values are that dataclass's fields, under its rules
            yield from _numeric_fields(rules["like"], path)
            continue
        while get_origin(inner) is tuple or get_origin(inner) in (dict, Mapping):
            inner, path = strip_none(get_args(inner)[-1 if get_origin(inner) is not tuple else 0]), f"{path}[0]"
        if dataclasses.is_dataclass(inner):
            yield from _numeric_fields(inner, path)
        elif {int, float} & set(members(inner)):
            yield path, float if float in members(inner) else int, rules


def test_every_numeric_field_has_both_bounds():
    from testbed.stress.spec import StressFile
    from testbed.stress.steps import STEPS

    # a stress trigger's event values are matched for equality against events, never used as amounts
    # (a stress trigger's event values are matched for equality against events, never used as amounts)
    unbounded = [f"{cls.__name__}.{path}" for cls in (Scenario, Profile, LinkSpec, StressFile, *STEPS.values())
                 for path, _, rules in _numeric_fields(cls)
                 if ".event" not in path and not ({"gt", "ge"} & rules.keys() and {"lt", "le"} & rules.keys())]
    assert unbounded == []


# --- class 9: nesting, counts and files that end as one line --------------------------------------

def test_deeply_nested_yaml_in_a_file_is_one_line(tmp_path):
    file = base_scenario(tmp_path, "name: t\ndata: " + "[" * 5000 + "]" * 5000 + "\nfleet: [{profile: laptop}]\n")
    line = refusal(validate(str(file)))
    assert line.startswith(f"{file}: invalid YAML: nested deeper than 32 levels (allowed: at most 32) "
                           "(line 2, column "), line


def test_deeply_nested_yaml_in_a_set_value_is_one_line(tmp_path):
    line = refusal(validate(str(base_scenario(tmp_path)), "--set", "data=" + "{a: " * 3000 + "1" + "}" * 3000))
    assert line.startswith("--set: data: invalid YAML: nested deeper than 32 levels (allowed: at most 32)"), line


def test_an_integer_too_long_for_python_is_one_line(tmp_path):
    line = refusal(validate(str(base_scenario(tmp_path)), "--set", "rounds=1" + "0" * 5000))
    assert line.startswith("--set: rounds: invalid YAML: an integer of 5001 digits (allowed: at most 4300)"), line


def test_a_large_scenario_is_refused_by_its_size_before_it_is_read(tmp_path):
    file = base_scenario(tmp_path, BASE + "# " + "x" * (2 << 20) + "\n")
    assert refusal(validate(str(file))) == (f"{file}: is 2.0 MiB, too large for a config file "
                                            "(allowed: at most 1 MiB)")


def test_an_endless_file_is_refused_without_reading_it_all(tmp_path):
    assert refusal(validate("/dev/zero")) == "/dev/zero: is not a regular file (allowed: a config file)"
    scenario = base_scenario(tmp_path, "name: t\nfleet: [{profile: /dev/zero}]\n")
    assert refusal(validate(str(scenario))) == (f"{scenario}: fleet[0].profile: profile file '/dev/zero' is not "
                                                "a regular file (allowed: a regular file)")


def test_an_error_about_a_file_never_quotes_it(tmp_path):
    secret = tmp_path / "secret.txt"  # what /etc/passwd or a key file is to the YAML reader: one long string
    secret.write_text("root:x:0:0:root:/root:/bin/bash token-8f3a9c\ndaemon:x:1:1::/usr/sbin/nologin\n")
    keys = tmp_path / "keys.yaml"  # or a mapping of secrets: keys are named at most 40 characters long
    keys.write_text(f"{'api_token_' * 10}: 8f3a9c\n")
    for file in (secret, keys, Path("/etc/passwd")):
        line = refusal(validate(str(base_scenario(tmp_path, f"name: t\nfleet: [{{profile: {file}}}]\n"))))
        assert "8f3a9c" not in line and "root:" not in line and "api_token_" * 5 not in line, line
    line = refusal(validate(str(base_scenario(tmp_path, f"name: t\nfleet: [{{profile: {secret}}}]\n"))))
    assert line == f"{secret}: top level must be a mapping (key: value lines), got a string"


def test_a_key_with_a_line_break_stays_on_one_line(tmp_path):
    line = refusal(validate(str(base_scenario(tmp_path, BASE + '"rounds\\nFAKE: line": 3\n'))))
    assert line.startswith(f"{tmp_path / 's.yaml'}: 'rounds\\nFAKE: line': unknown key 'rounds\\nFAKE: line' "
                           "(allowed: name, seed"), line


def trace_scenario(folder: Path, capacity: Path) -> Path:
    return base_scenario(folder, f"name: t\nfleet: [{{profile: laptop, fedscale: {{capacity: '{capacity}'}}}}]\n")


def test_a_deeply_nested_json_trace_is_one_line(tmp_path):
    trace = tmp_path / "capacity.json"
    trace.write_text("[" * 100_000 + "]" * 100_000)
    assert refusal(validate(str(trace_scenario(tmp_path, trace)))) == (
        f"{trace}: invalid JSON: nested too deeply to parse (a FedScale trace is 3 levels deep: "
        "client id -> figures -> list of times)")


class _Scalar:
    """Pickles as NumPy's scalar constructor with any dtype and state: an allowed global, a hostile value."""

    def __init__(self, dtype, state):
        self.dtype, self.state = dtype, state

    def __reduce__(self):
        from numpy._core.multiarray import scalar

        return scalar, (self.dtype, self.state)


@pytest.mark.parametrize("value, kind", [(np.timedelta64(5, "s"), "timedelta64"),
                                         (_Scalar(np.dtype("f8"), 12345), "TypeError")])
def test_a_pickle_of_an_allowed_class_with_a_bad_state_is_one_line(tmp_path, value, kind):
    trace = tmp_path / "capacity"
    trace.write_bytes(pickle.dumps({1: {"computation": value, "communication": 1000.0}}))
    line = refusal(validate(str(trace_scenario(tmp_path, trace))))
    assert line.startswith(f"{trace}: ") and kind in line, line


def test_a_trace_beyond_its_size_limit_is_refused_before_it_is_read(tmp_path):
    trace = tmp_path / "capacity"
    with trace.open("wb") as handle:  # sparse: takes no disk, and nothing may read it
        handle.truncate(300 << 20)
    assert refusal(validate(str(trace_scenario(tmp_path, trace)))) == (
        f"{trace}: is 300.0 MiB, too large for a FedScale trace (allowed: at most 256 MiB)")


# --- the property: any number in any numeric field is refused with one line, or it runs ----------

def _schema_paths() -> list[tuple[str, str, Any, Mapping]]:
    """(where, path, leaf type, rules): where is "scenario", "profile" or "link"; paths as errors name them."""
    paths = [("scenario", path, leaf, rules) for path, leaf, rules in _numeric_fields(Scenario)
             if not path.startswith("fleet[0].fedscale") or path.endswith("reference_ms_per_sample")]
    paths += [("profile", path, leaf, rules) for path, leaf, rules in _numeric_fields(Profile)]
    paths += [("link", path, leaf, rules) for path, leaf, rules in _numeric_fields(LinkSpec)]
    return paths


PATHS = _schema_paths()
LINK = {"name": "net", "downlink_mbps": 100, "uplink_mbps": 50, "latency_ms": 10}
HOLE = "@value@"  # where the drawn value's YAML text goes


def _placed(path: str, text: str) -> tuple[Any, str]:
    """The YAML structure that puts `text` at `path` (`a.b[0]` -> {a: {b: [HOLE]}}), and the --set item."""
    value: Any = HOLE
    for part in reversed(path.replace("[0]", ".[0]").split(".")):
        value = [value] if part == "[0]" else {part: value}
    if path == "backbone.exits[0]":
        return value, f"backbone.exits=[{text}]"
    if path.startswith("exit_policy.preferred_exits"):  # a mapping task -> exit index
        return {"exit_policy": {"preferred_exits": {"keyword": HOLE}}}, f"exit_policy.preferred_exits.keyword={text}"
    if path.startswith("availability.intervals"):  # pairs [start_s, end_s]: the drawn value ends the first period
        return {"availability": {"intervals": [[0, HOLE]]}}, ""
    partners = {"availability.online_s": {"availability": {"online_s": HOLE, "offline_s": HOLE}},  # go together
                "availability.offline_s": {"availability": {"online_s": HOLE, "offline_s": HOLE}},
                "availability.period_s": {"availability": {"intervals": [[0, 1]], "period_s": HOLE}},
                "threads": {"threads": HOLE, "cores": HOLE}}  # threads <= cores
    if path in partners:
        return partners[path], ""
    return value, f"{path}={text}"


def _case(folder: Path, where: str, path: str, text: str) -> tuple[Path, list[str]]:
    """Write the scenario (and its profile and link) with the drawn value in; the --set overrides it needs."""
    profile: dict = {"name": "dev", "link": str(folder / "net.yaml")}
    link = dict(LINK)
    nested, override = _placed(path, text)
    if where == "profile":
        profile.update(nested)
    if where == "link":
        link.update(nested)
    for name, data in (("dev.yaml", profile), ("net.yaml", link)):
        (folder / name).write_text(yaml.safe_dump(data).replace(f"'{HOLE}'", text))
    scenario = (f"name: t\nrounds: 1\ndeadline_s: 20\nbackbone: {{name: debug}}\n"
                "data: {words: [stop, spot, no]}\ntraining: {local_steps: 2, batch_size: 8}\n"
                f"emulation: {{clock: real, dilation: 1}}\nfleet: [{{profile: {folder / 'dev.yaml'}, count: 2}}]\n")
    (folder / "s.yaml").write_text(scenario)
    overrides = []
    if path.startswith("fleet[0].fedscale"):
        overrides.append(f"fleet[0].fedscale={{capacity: '{TRACES / 'client_device_capacity'}'}}")
    if where == "scenario":
        overrides.append(override)
    return folder / "s.yaml", overrides


def _number_texts(rules: Mapping) -> st.SearchStrategy[str]:
    """YAML texts of numbers: anything at all, the field's bounds and their neighbours, extremes."""
    bounds = [rules[k] for k in ("gt", "ge", "lt", "le") if k in rules]
    near = [b * f + d for b in bounds for f in (1, 1 - 1e-9, 1 + 1e-9, -1) for d in (0, -1, 1)]
    extremes = ["1e300", "1e-300", "-1e308", "1" + "0" * 5000, "18446744073709551616", "0", "-0.0",
                ".inf", "-.inf", ".nan"]
    return (st.integers().map(str) | st.floats().map(_float_text) | st.sampled_from(extremes)
            | st.sampled_from(near).map(lambda v: _float_text(v) if isinstance(v, float) else str(v)))


def _float_text(value: float) -> str:
    if value != value:
        return ".nan"
    return {float("inf"): ".inf", float("-inf"): "-.inf"}.get(value, repr(value))


def _allowed(leaf: Any, text: str, rules: Mapping) -> bool:
    """Whether the value passes the field's own type and bounds (cross-field rules aside)."""
    try:
        value = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (leaf is int and not isinstance(value, int)):
        return False
    checks = {"gt": lambda b: value > b, "ge": lambda b: value >= b, "lt": lambda b: value < b,
              "le": lambda b: value <= b}
    return value == value and all(check(rules[k]) for k, check in checks.items() if k in rules)


def _validate_here(scenario: Path, overrides: list[str]) -> tuple[int, str, str]:
    """`testbed validate` in this process: an exception escaping it is what a user sees as a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["validate", str(scenario), *(f"--set={o}" for o in overrides)])
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_number_in_any_field_is_refused_with_one_line_or_accepted(tmp_path_factory, data):
    where, path, leaf, rules = data.draw(st.sampled_from(PATHS), label="field")
    text = data.draw(_number_texts(rules), label="value")
    folder = tmp_path_factory.mktemp("case")
    scenario, overrides = _case(folder, where, path, text)
    code, out, err = _validate_here(scenario, overrides)
    if code == 0:
        assert out.startswith(f"ok  {scenario}") and not err, (out, err)
        assert _allowed(leaf, text, rules), f"{where} {path}={text[:60]} is outside its rules but validated"
    else:
        lines = err.splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("testbed validate: error: "), (code, err)


# The run half: values each field accepts, a real run of one round (debug backbone, 2 clients) under the
# real clock (_case's scenario), where emulation.dilation applies. The caps keep an example's wall time
# bounded, not the schema: a round lasts at most deadline x dilation wall seconds, and a bigger fleet only
# costs this 2-core host time; neither changes what is tested.
RUN_CAPS = {"deadline_s": 20, "emulation.dilation": 3, "fleet[0].count": 3, "min_clients": 3}
RUN_PATHS = [case for case in PATHS if case[1] != "rounds"]  # the run is one round: `rounds` is the test's
RUN_TIMEOUT_S = 300  # a hang, not slowness: a one-round run here takes 15-40 s


def _accepted_texts(leaf: Any, path: str, rules: Mapping) -> st.SearchStrategy[str]:
    low = rules.get("ge", rules.get("gt"))
    high = min(rules.get("le", rules.get("lt")), RUN_CAPS.get(path, float("inf")))
    if leaf is int:
        return st.integers(low, high).map(str)
    return st.floats(low, high, exclude_min="gt" in rules, exclude_max="lt" in rules and path not in RUN_CAPS
                     ).map(_float_text)


def _run(scenario: Path, overrides: list[str], out: Path) -> subprocess.CompletedProcess:
    """`testbed run` in its own session, so that a hang is stopped with everything it started."""
    command = command_of("run", str(scenario), "--out", str(out), *(f"--set={o}" for o in overrides))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"testbed run hung (over {RUN_TIMEOUT_S} s): {command}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_accepted_number_runs_to_a_finished_or_clearly_failed_run(tmp_path_factory, cache, data):
    where, path, leaf, rules = data.draw(st.sampled_from(RUN_PATHS), label="field")
    text = data.draw(_accepted_texts(leaf, path, rules), label="value")
    folder = tmp_path_factory.mktemp("run")
    scenario, overrides = _case(folder, where, path, text)
    code, out, err = _validate_here(scenario, overrides)
    if code != 0:  # a cross-field rule (threads <= cores, min_clients <= fleet...): refused with one line
        assert code == 2 and len(err.splitlines()) == 1, err
        return
    run_dir = folder / "out"
    result = _run(scenario, overrides, run_dir)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    log = events(run_dir)
    if result.returncode == 0:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["updates"] >= 1, summary
    elif not log:  # refused before any process started (the data or the host cannot serve it): one line
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("testbed run: error: "), \
            result.stderr
    else:
        failed = [e for e in log if e["kind"] == "run_failed"]
        assert failed and failed[-1]["reason"] and "\n" not in failed[-1]["reason"], (result.returncode, log[-3:])
    pids = json.loads((run_dir / "processes.json").read_text()) if (run_dir / "processes.json").exists() else {}
    assert not [name for name, pid in pids.items() if alive(pid)], pids  # no orphans
