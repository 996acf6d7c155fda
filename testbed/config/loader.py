"""Loading scenarios, device profiles and link presets from YAML into validated config objects.

Profile and link references are names (`rpi4` -> profiles/rpi4.yaml, `4g` -> profiles/links/4g.yaml)
or paths (containing '/' or ending in .yaml), tried relative to the referring file's directory, then
the working directory; so are FedScale trace files. Paths are made absolute at load time, so a
scenario saved with `dump_scenario` into a run directory loads the same from anywhere.
"""

import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import yaml

from testbed.config.convert import from_data, join_path, quote, to_data
from testbed.config.depth import check_depth, known_depth
from testbed.config.fedscale import Device, trace_devices
from testbed.config.overrides import apply_overrides, blame_overrides
from testbed.config.schema import FedScaleTrace, FleetEntry, LinkSpec, Profile, Scenario
from testbed.config.yamlio import read_mapping
from testbed.errors import ConfigError
from testbed.paths import profiles_dir

__all__ = ["ClientSpec", "apply_overrides", "available", "dump_scenario", "is_path", "load_link",
           "load_profile", "load_scenario", "resolve_fleet", "scenario_to_dict"]

Ref = TypeVar("Ref", Profile, LinkSpec)
_KINDS = {Profile: ("profile", "."), LinkSpec: ("link", "links")}  # noun, folder in profiles_dir()


@dataclass(frozen=True, kw_only=True)
class ClientSpec:
    """One emulated client, fully resolved: what a launcher needs to start its process."""

    client_id: str      # "c00", "c01", ... in fleet order (wider when the fleet has > 100 clients)
    profile: Profile
    link: LinkSpec      # the fleet entry's link, else the profile's default
    task: str           # one of names.TASKS


def load_scenario(file_or_mapping: Path | str | Mapping, overrides: Iterable[str] = (), *, source: str | None = None,
                  base_dir: Path | str | None = None) -> Scenario:
    """Read, override (`--set` strings), validate a scenario and check every profile and link it uses.

    `file_or_mapping` is a scenario file, or the mapping such a file holds (e.g. a scenario written inline in a
    stress file). `source` names it in errors (default: the file's path; required for a mapping); relative
    references are tried in `base_dir` first, then the working directory (default: the file's directory; for a
    mapping, the working directory alone)."""
    if isinstance(file_or_mapping, Mapping):
        if source is None:
            raise TypeError("a scenario given as a mapping needs a source to name it in errors")
        raw = dict(file_or_mapping)
    else:
        source = source or str(file_or_mapping)
        raw = read_mapping(file_or_mapping, source)
        base_dir = Path(file_or_mapping).parent if base_dir is None else base_dir
    base_dir = Path(base_dir or ".")
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    raw = apply_overrides(raw, overrides)
    try:
        scenario = from_data(Scenario, raw, source=source)
        fleet = tuple(_resolve_entry(entry, i, base_dir, source, scenario.seed)[0]
                      for i, entry in enumerate(scenario.fleet))
        data = replace(scenario.data, path=_data_path(scenario.data.path, base_dir))
        depth = known_depth(scenario.backbone.name)  # else the run checks once it has loaded the backbone
        if depth is not None:
            check_depth(scenario, depth, source)
        return replace(scenario, fleet=fleet, data=data)
    except ConfigError as error:
        raise blame_overrides(error, source, overrides) from None


def load_profile(name_or_path: str | Path, *, base_dir: Path | None = None,
                 source: str = "profile", path: str = "") -> Profile:
    """A device profile by name or path; an unknown name is a ConfigError at (source, path)."""
    return _resolve(Profile, str(name_or_path), base_dir, source, path)[0]


def load_link(name_or_path: str | Path, *, base_dir: Path | None = None,
              source: str = "link", path: str = "") -> LinkSpec:
    """A link preset by name or path; an unknown name is a ConfigError at (source, path)."""
    return _resolve(LinkSpec, str(name_or_path), base_dir, source, path)[0]


def resolve_fleet(scenario: Scenario) -> list[ClientSpec]:
    """One ClientSpec per emulated client, ids `c00`, `c01`, ... in fleet order (trace entries: draw order)."""
    source = f"scenario {scenario.name!r}"
    total = sum(entry.count for entry in scenario.fleet)
    ids = (f"c{n:0{max(2, len(str(total - 1)))}d}" for n in itertools.count())
    clients = []
    for index, entry in enumerate(scenario.fleet):
        _, devices = _resolve_entry(entry, index, None, source, scenario.seed)
        clients += [ClientSpec(client_id=next(ids), profile=profile, link=link, task=entry.task)
                    for profile, link in devices]
    return clients


def scenario_to_dict(scenario: Scenario) -> dict:
    """Plain data (dicts, lists, scalars) with every default filled in; loads back equal."""
    return to_data(scenario)


def dump_scenario(scenario: Scenario, path: Path | str) -> Path:
    """Save the resolved scenario as YAML (e.g. into its run directory); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(scenario_to_dict(scenario), sort_keys=False, allow_unicode=True)
    path.write_text(f"# resolved scenario {scenario.name!r}: every default filled in\n{text}", encoding="utf-8")
    return path


def available(cls: type[Ref]) -> list[str]:
    """Names of the profiles (cls=Profile) or link presets (cls=LinkSpec) in profiles_dir()."""
    return sorted(file.stem for file in (profiles_dir() / _KINDS[cls][1]).glob("*.yaml"))


def is_path(ref: str) -> bool:
    """A reference is a path when it contains a directory separator or ends in .yaml/.yml."""
    return "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml"))


def _resolve_entry(entry: FleetEntry, index: int, base_dir: Path | None, source: str,
                   seed: int) -> tuple[FleetEntry, list[Device]]:
    """Load an entry's profile, link and traces: its `count` devices; the entry comes back with path
    references made absolute."""
    at = join_path("fleet", index)
    profile, profile_ref = _resolve(Profile, entry.profile, base_dir, source, f"{at}.profile")
    link_ref, link_at = (entry.link, f"{at}.link") if entry.link else (profile.link, f"{at}.profile")
    link, link_ref = _resolve(LinkSpec, link_ref, base_dir, source, link_at)
    entry = replace(entry, profile=profile_ref, link=link_ref if entry.link else None)
    if entry.fedscale is None:
        return entry, [(profile, link)] * entry.count
    trace = _trace_files(entry.fedscale, base_dir, source, f"{at}.fedscale")
    devices = trace_devices(trace, profile, link, count=entry.count, seed=f"{seed}:{at}", source=source, path=at)
    return replace(entry, fedscale=trace), devices


def _trace_files(trace: FedScaleTrace, base_dir: Path | None, source: str, path: str) -> FedScaleTrace:
    """The trace with its files found (scenario directory first, then cwd) and made absolute."""
    capacity = _find_file("FedScale capacity trace", trace.capacity, base_dir, source, f"{path}.capacity")
    behaviour = None if trace.behaviour is None else str(_find_file(
        "FedScale behaviour trace", trace.behaviour, base_dir, source, f"{path}.behaviour"))
    return replace(trace, capacity=str(capacity), behaviour=behaviour)


def _resolve(cls: type[Ref], ref: str, base_dir: Path | None, source: str, path: str) -> tuple[Ref, str]:
    """Load what `ref` names; return it and `ref` (absolute when it is a path)."""
    file = _locate(cls, ref, base_dir, source, path)
    return _read(cls, file), (str(file) if is_path(ref) else ref)


def _locate(cls: type, ref: str, base_dir: Path | None, source: str, path: str) -> Path:
    noun, folder = _KINDS[cls]
    if is_path(ref):
        return _find_file(noun, ref, base_dir, source, path)
    file = profiles_dir() / folder / f"{ref}.yaml"
    if not file.is_file():
        allowed = ", ".join(available(cls)) or f"none in {file.parent}"
        raise ConfigError(source, path,
                          f"unknown {noun} {ref!r} (allowed: {allowed}; or a path to a YAML file)")
    return file


def _read(cls: type[Ref], file: Path) -> Ref:
    """Validate a profile or link file; a profile's own link reference is checked too."""
    shown = _shown(file)
    obj = from_data(cls, read_mapping(file, shown), source=shown)
    if obj.name != file.stem:  # names are how scenarios and reports refer to it
        raise ConfigError(shown, "name", f"{quote(obj.name)} must equal the file name ({file.stem!r})")
    if cls is Profile:
        _, link_ref = _resolve(LinkSpec, obj.link, file.parent, shown, "link")
        obj = replace(obj, link=link_ref)
    return obj


def _find_file(noun: str, ref: str, base_dir: Path | None, source: str, path: str) -> Path:
    """The absolute path of the file `ref` names; a ConfigError at (source, path) listing where it looked."""
    candidates = _candidates(ref, base_dir)
    found = next((file for file in candidates if file.is_file()), None)
    if found is None:
        odd = next((file for file in candidates if file.exists() and not file.is_dir()), None)
        if odd is not None:  # a FIFO or a device (/dev/zero): reading it would never end
            raise ConfigError(source, path, f"{noun} file {quote(ref)} is not a regular file (allowed: a regular file)")
        tried = ", ".join(str(file) for file in candidates)
        raise ConfigError(source, path, f"{noun} file {quote(ref)} not found (tried: {tried})")
    return found.resolve()


def _candidates(ref: str, base_dir: Path | None) -> list[Path]:
    """Where a relative path may be: the referring file's directory first, then the working directory."""
    ref_path = Path(ref).expanduser()
    if ref_path.is_absolute():
        return [ref_path]
    dirs = dict.fromkeys([Path(base_dir or ".").resolve(), Path.cwd()])  # ordered, no duplicates
    return [directory / ref_path for directory in dirs]


def _data_path(path: str | None, base_dir: Path) -> str | None:
    """The corpus path made absolute (scenario directory first, then cwd); existence is data's concern."""
    if path is None:
        return None
    candidates = _candidates(path, base_dir)
    return str(next((c for c in candidates if c.exists()), candidates[-1]).resolve())


def _shown(file: Path) -> str:
    """A file as errors name it: relative to the working directory when inside it."""
    try:
        return str(file.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(file)
