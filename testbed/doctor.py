"""`testbed doctor`: what this installation and host offer a run, in lines that paste well into an issue.

Answers in well under a second: torch is not imported (package versions come from their metadata),
and the kernel backend's own probe (a throw-away cgroup and network namespace) takes milliseconds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Distributions a bug report needs the versions of: the dependencies in pyproject.toml, then optional ones.
DEPENDENCIES = ("torch", "torchaudio", "transformers", "pyzmq", "msgpack", "numpy", "rich", "PyYAML",
                "soundfile", "espeakng-loader", "matplotlib")
OPTIONAL = ("ray",)
NOT_INSTALLED = "not installed"
MIB = 1024 * 1024

Report = dict[str, dict[str, Any]]  # section -> fact -> a scalar, a list of lines or a name -> scalar mapping


def add_doctor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", type=Path,
                        help="also say which clock, backend and dilation this scenario would get here")
    parser.add_argument("--json", action="store_true", help="print the same as one JSON object")


def doctor(args: argparse.Namespace) -> int:
    """Print the report (plain aligned lines, or JSON); a bad scenario is the loader's one-line UserError."""
    scenario = scenario_facts(args.scenario) if args.scenario else None  # a bad file fails before any probe
    report = collect()
    if scenario:
        report["scenario"] = {**scenario, "backend_here": scenario_backend(scenario, report["emulation"])}
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def collect() -> Report:
    return {"testbed": testbed_facts(), "host": host_facts(), "emulation": emulation_facts(),
            "defaults": default_facts(), "cache": cache_facts(), "shipped": shipped_facts(),
            "packages": package_facts()}


def testbed_facts() -> dict[str, Any]:
    from testbed import __version__
    from testbed.version import code_version

    return {"version": __version__, "code": code_version(), "python": platform.python_version(),
            "executable": sys.executable, "platform": platform.platform()}


def host_facts() -> dict[str, Any]:
    from testbed.launch.capacity import available_mb, meminfo_mb

    return {"cpu_cores": os.cpu_count(), "usable_cores": usable_cores(), "memory_total_mib": meminfo_mb("MemTotal"),
            "memory_available_mib": available_mb()}


def usable_cores() -> int | None:
    """CPUs this process may run on (its affinity; the figure the automatic dilation uses), else all of them."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def emulation_facts() -> dict[str, Any]:
    """What the kernel backend's probe finds, and what each `emulation.backend` value would do here."""
    from testbed.emulation.kernel import probe_kernel_backend

    root = os.geteuid() == 0  # without root (or CAP_SYS_ADMIN) the kernel refuses cgroups and namespaces
    try:
        support = probe_kernel_backend()
    except OSError as error:  # no /proc (not Linux): only the user backend
        return {"root": root, "kernel_probe": f"failed: {error}", "backends": backend_outcomes(None, None)}
    return {"root": root, "cgroup_version": support.cgroup_version, "cpu_quota": support.cpu, "memory_limit": support.memory,
            "network_shaping": support.network, "why_not": list(support.reasons),
            "backends": backend_outcomes(support.cpu, support.memory),
            "links": "shaped in the transport with every backend (runs do not use tc netem)"}


def backend_outcomes(cpu: bool | None, memory: bool | None) -> dict[str, str]:
    """Backend name -> what a run with it gets on this host (launch/limits.py: kernel and auto fall back alike)."""
    granted = [what for what, ok in (("cgroup CPU quota", cpu), ("cgroup memory limit", memory)) if ok]
    if len(granted) == 2:
        kernel = "works: " + " and ".join(granted)
    elif granted:
        kernel = f"partly: {granted[0]}; the user backend does the rest"
    else:
        kernel = "falls back to the user backend (no cgroup limit usable here)"
    return {"user": "works: duty cycle paces compute", "kernel": kernel, "auto": kernel}


def scenario_backend(scenario: Mapping[str, Any], emulation: Mapping[str, Any]) -> str:
    """What the scenario's backend gets here; under the event clock a CPU quota is not applied (it paces real
    time, launch/limits.py)."""
    if scenario["clock"] == "events" and scenario["backend"] == "user":
        return "works: the event clock bills compute from CPU seconds (nothing paced)"
    cpu = emulation.get("cpu_quota") and scenario["clock"] == "real"
    return backend_outcomes(cpu, emulation.get("memory_limit"))[scenario["backend"]]


def default_facts() -> dict[str, Any]:
    """The clock, backend and dilation rule a scenario that sets none of them gets."""
    from testbed.config.names import BACKENDS, CLOCKS
    from testbed.config.schema import EmulationSpec
    from testbed.emulation.dilation import host_cores

    spec = EmulationSpec()
    cores = host_cores(spec)
    usable = cores * spec.headroom
    return {"clock": spec.clock, "clocks": ", ".join(CLOCKS), "backend": spec.backend, "backends": ", ".join(BACKENDS),
            "dilation": (f"automatic (clock real): 1 up to a demand of {usable:g} cores ({cores} host cores x "
                         f"{spec.headroom:g} headroom), demand / {usable:g} beyond; demand = sum of speed x threads "
                         "of the clients busy at once")}


def scenario_facts(path: Path) -> dict[str, Any]:
    """What a run of this scenario would use here; the loader's ConfigError (exit code 2) when it is not valid."""
    from testbed.config.loader import load_scenario, resolve_fleet
    from testbed.emulation.dilation import fleet_dilation

    scenario = load_scenario(path)
    clients = resolve_fleet(scenario)
    dilation = fleet_dilation(scenario, clients)
    return {"file": str(path), "name": scenario.name, "clients": len(clients), "clock": scenario.emulation.clock,
            "backend": scenario.emulation.backend, "dilation": round(dilation.factor, 3),
            "dilation_reason": dilation.reason}


def cache_facts() -> dict[str, Any]:
    """The cache folder, its size and each entry of its kinds (corpus, backbones, costs, waveforms) in MiB."""
    from testbed.paths import cache_dir

    root = cache_dir()
    facts: dict[str, Any] = {"path": str(root), "present": root.is_dir(), "total_mib": mib(size_bytes(root))}
    if root.is_dir():
        for kind in sorted(entry for entry in root.iterdir() if entry.is_dir()):
            facts[f"{kind.name}_mib"] = {entry.name: mib(size_bytes(entry)) for entry in sorted(kind.iterdir())}
    return facts


def shipped_facts() -> dict[str, Any]:
    """The pretrained backbone shipped in the package (model/shipped.py, one at a time): its cache entry, digest,
    corpus version, size, and whether the cache holds it yet (a run copies it there on first use)."""
    from testbed.model.shipped import SHIPPED_DIR, shipped_record
    from testbed.paths import cache_dir

    entries = sorted(path for path in SHIPPED_DIR.glob("*") if path.is_dir())
    if not entries:
        return {"backbone": "none (a backbone is pretrained here on first use)"}
    entry = entries[0]
    record = shipped_record(entry)
    return {"backbone": entry.name, "digest": record["digest"], "corpus_version": record["corpus"]["format_version"],
            "total_mib": mib(size_bytes(entry)), "in_cache": (cache_dir() / "backbones" / entry.name).is_dir()}


def size_bytes(path: Path) -> int:
    """Bytes under a file or folder, links not followed; 0 when it is gone."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while we walked
                pass
    return total


def mib(size: int) -> float:
    return round(size / MIB, 1)


def package_facts() -> dict[str, Any]:
    return {"required": {name: package_version(name) for name in DEPENDENCIES},
            "optional": {name: package_version(name) for name in OPTIONAL}}


def package_version(distribution: str) -> str:
    """Its installed version from the package metadata (nothing is imported), or NOT_INSTALLED."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def render_text(report: Report) -> str:
    """One line per fact under its section's name, values aligned; nested mappings one line per entry."""
    width = max(len(label(key)) for facts in report.values() for key in facts)
    lines = []
    for section, facts in report.items():
        lines.append(section)
        for key, value in facts.items():
            lines.extend(fact_lines(label(key), value, width))
    return "\n".join(lines)


def fact_lines(name: str, value: Any, width: int) -> list[str]:
    if isinstance(value, Mapping):
        if not value:
            return [f"  {name:<{width}}  none"]
        inner = max(width - 2, *(len(str(key)) for key in value))  # short names align with the other values
        return [f"  {name}"] + [f"    {key:<{inner}}  {shown(entry)}" for key, entry in value.items()]
    if isinstance(value, list):
        shown_lines = value or ["-"]
        return [f"  {name:<{width}}  {shown_lines[0]}"] + [f"  {'':<{width}}  {line}" for line in shown_lines[1:]]
    return [f"  {name:<{width}}  {shown(value)}"]


def label(key: str) -> str:
    """A fact's JSON key as a text label: `memory_total_mib` -> `memory total (MiB)`."""
    unit = " (MiB)" if key.endswith("_mib") else ""
    return key.removesuffix("_mib").replace("_", " ") + unit


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "unknown" if value is None else str(value)
