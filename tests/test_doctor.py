"""`testbed doctor` as a user runs it: a real process, its figures checked against this host and a cache made here."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.config.schema import EmulationSpec
from testbed.doctor import scenario_backend

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


@pytest.fixture
def small_cache(tmp_path) -> Path:
    """A cache holding a 2 MiB backbone, a 1 MiB corpus and a cost table of a few bytes."""
    root = tmp_path / "cache"
    backbone = root / "backbones" / "tiny-fake-corpus-c0ffee"
    backbone.mkdir(parents=True)
    (backbone / "model.safetensors").write_bytes(bytes(2 * MIB))
    (backbone / "config.json").write_text("{}")
    corpus = root / "corpus" / "c0ffee"
    corpus.mkdir(parents=True)
    (corpus / "clips.bin").write_bytes(bytes(MIB))
    (corpus / "corpus.json").write_text("{}")
    (root / "costs").mkdir()
    (root / "costs" / "0123456789abcdef.json").write_text('{"step_cpu_s": {}}')
    return root


def doctor(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESTBED_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "testbed", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def ray_expected() -> str:
    return "not installed" if importlib.util.find_spec("ray") is None else importlib.metadata.version("ray")


def test_json_reports_this_host_the_cache_the_packages_and_the_default_clock(small_cache):
    result = doctor("--json", cache=small_cache)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["host"]["cpu_cores"] == os.cpu_count()
    assert report["host"]["usable_cores"] == len(os.sched_getaffinity(0))
    cache = report["cache"]
    assert cache["path"] == str(small_cache) and cache["present"] is True
    assert cache["backbones_mib"] == {"tiny-fake-corpus-c0ffee": 2.0}
    assert cache["corpus_mib"] == {"c0ffee": 1.0}
    assert cache["costs_mib"] == {"0123456789abcdef.json": 0.0}
    assert cache["total_mib"] == 3.0
    assert report["packages"]["optional"]["ray"] == ray_expected()
    assert report["packages"]["required"]["torch"] == importlib.metadata.version("torch")
    assert report["defaults"]["clock"] == EmulationSpec().clock
    assert report["defaults"]["backend"] == EmulationSpec().backend
    assert report["emulation"]["root"] == (os.geteuid() == 0)
    assert report["emulation"]["backends"]["user"].startswith("works")
    assert "scenario" not in report


def test_text_lists_the_same_figures_one_per_line(small_cache):
    result = doctor(cache=small_cache)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["cpu", "cores", str(os.cpu_count())] in lines
    assert ["tiny-fake-corpus-c0ffee", "2.0"] in lines
    assert ["c0ffee", "1.0"] in lines
    assert ["total", "(MiB)", "3.0"] in lines
    assert ["ray", *ray_expected().split()] in lines
    assert ["clock", EmulationSpec().clock] in lines
    assert ["path", str(small_cache)] in lines


def test_a_missing_cache_is_reported_empty(tmp_path):
    report = json.loads(doctor("--json", cache=tmp_path / "absent").stdout)
    assert report["cache"] == {"path": str(tmp_path / "absent"), "present": False, "total_mib": 0.0}


def test_the_shipped_backbone_is_reported_with_its_digest_and_whether_the_cache_holds_it(tmp_path):
    from testbed.model.shipped import SHIPPED_DIR, shipped_record

    (entry,) = [path for path in SHIPPED_DIR.iterdir() if path.is_dir()]
    shipped = json.loads(doctor("--json", cache=tmp_path).stdout)["shipped"]
    assert shipped["backbone"] == entry.name and shipped["digest"] == shipped_record(entry)["digest"]
    assert shipped["total_mib"] > 20 and shipped["in_cache"] is False
    shutil.copytree(entry, tmp_path / "backbones" / entry.name)  # as a first run installs it
    assert json.loads(doctor("--json", cache=tmp_path).stdout)["shipped"]["in_cache"] is True


def test_a_scenario_gets_its_clock_backend_and_dilation(small_cache, write_scenario):
    path = write_scenario("doc", emulation="{clock: events, backend: kernel}")
    result = doctor("--json", str(path), cache=small_cache)
    assert result.returncode == 0, result.stderr
    scenario = json.loads(result.stdout)["scenario"]
    assert (scenario["name"], scenario["clients"], scenario["clock"], scenario["backend"]) == ("doc", 3, "events", "kernel")
    assert scenario["dilation"] == 1.0 and "event clock" in scenario["dilation_reason"]


def test_a_bad_scenario_is_one_line_and_exit_code_2(small_cache, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrounds: -1\n")
    result = doctor(str(bad), cache=small_cache)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"testbed doctor: error: {bad}: ")
    missing = doctor(str(tmp_path / "absent.yaml"), cache=small_cache)
    assert (missing.returncode, missing.stderr.strip()) == (2, f"testbed doctor: error: {tmp_path / 'absent.yaml'}: file not found")


def test_doctor_does_not_import_torch(small_cache):
    code = ("import sys; from testbed.cli import main; main(['doctor']); "
            "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")
    env = {**os.environ, "TESTBED_CACHE": str(small_cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert result.stderr.strip() == "torch imported: False"


def test_under_the_event_clock_the_kernel_backend_applies_the_memory_limit_alone():
    emulation = {"cpu_quota": True, "memory_limit": True}
    assert scenario_backend({"clock": "real", "backend": "kernel"}, emulation).endswith("and cgroup memory limit")
    assert scenario_backend({"clock": "events", "backend": "auto"}, emulation).startswith("partly: cgroup memory limit")
    assert scenario_backend({"clock": "events", "backend": "user"}, emulation).startswith("works: the event clock")
    assert scenario_backend({"clock": "real", "backend": "user"}, emulation).startswith("works: duty cycle")
    assert "falls back" in scenario_backend({"clock": "real", "backend": "kernel"}, {})
