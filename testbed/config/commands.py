"""`testbed validate` and `testbed profiles`: check config files, list device profiles and links."""

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from testbed.config.convert import fields_of, quote
from testbed.config.depth import known_depth
from testbed.config.loader import available, load_link, load_profile, load_scenario, resolve_fleet
from testbed.config.overrides import parse_override
from testbed.config.schema import LinkSpec, Profile, Scenario
from testbed.config.yamlio import read_mapping
from testbed.errors import ConfigError
from testbed.paths import profiles_dir


def add_validate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="scenario, profile, link preset or stress YAML files (kind detected)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario value before checking, e.g. rounds=5, "
                             "backbone.exits=[2,4], fleet[0].count=3 (repeatable)")


def validate(args: argparse.Namespace) -> int:
    """Check every file; one line each (`ok  FILE (...)` or the error); 2 if any failed."""
    for text in args.overrides:  # a malformed --set fails before any file is read
        parse_override(text)
    failed = 0
    for file in args.files:
        try:
            print(f"ok  {file} ({check_file(Path(file), args.overrides)})")
        except ConfigError as error:
            failed += 1
            print(f"testbed validate: error: {error}", file=sys.stderr)
    return 2 if failed else 0


STRESS = "stress"  # detect_kind's answer for a stress file (testbed/stress/spec.py)


def detect_kind(path: Path) -> type | str:
    """Scenario, Profile, LinkSpec or STRESS: from where the file lives or what it holds, else which schema
    its keys fit best."""
    raw = read_mapping(path)
    folder = path.resolve().parent
    if folder.name == "links":
        return LinkSpec
    if folder == profiles_dir().resolve() or folder.name == "profiles":
        return Profile
    if {"scenario", "checks"} <= raw.keys():
        return STRESS
    if "scenarios" in folder.parts:
        return Scenario
    return max((Scenario, Profile, LinkSpec), key=lambda cls: len(raw.keys() & fields_of(cls).keys()))


def check_file(path: Path, overrides: list[str]) -> str:
    """Load and fully check one file; a short summary of what it holds (`scenario 'x': 9 clients, ...`)."""
    kind = detect_kind(path)
    if kind == STRESS:  # both variants, as `testbed stress` and `testbed stress --quick` load them
        from testbed.stress.spec import load_stress

        full, quick = load_stress(path), load_stress(path, quick=True)
        return f"stress test {full.name!r}: {len(full.clients)} clients (quick: {len(quick.clients)})"
    if kind is Scenario:  # overrides apply to scenarios only
        scenario = load_scenario(path, overrides)
        clients = resolve_fleet(scenario)
        counts = [(len(clients), "client"), (len({c.profile.name for c in clients}), "profile"),
                  (len({c.link.name for c in clients}), "link")]
        unchecked = "" if known_depth(scenario.backbone.name) is not None else (
            f"; exits not checked: backbone {quote(scenario.backbone.name)} is neither a preset, a local directory "
            "nor in the Hugging Face cache (a run checks them once it has loaded it)")
        return (f"scenario {scenario.name!r}: " + ", ".join(f"{n} {noun}{'s' * (n != 1)}" for n, noun in counts)
                + unchecked)
    if kind is Profile:
        profile = load_profile(path.resolve())
        return (f"profile {profile.name!r}: speed {profile.speed:g}, {profile.cores} cores, "
                f"{profile.memory_mb} MB, link {load_link(profile.link).name!r}")
    link = load_link(path.resolve())
    return (f"link {link.name!r}: {link.downlink_mbps:g}/{link.uplink_mbps:g} Mbit/s, "
            f"{link.latency_ms:g} ms, {link.loss:.1%} loss")


def add_profiles_args(parser: argparse.ArgumentParser) -> None:
    """`testbed profiles` takes no options: it lists profiles_dir() ($TESTBED_PROFILES or profiles/)."""


def profiles(args: argparse.Namespace) -> int:
    """Print the device profiles and the link presets as two tables."""
    console = Console(width=None if sys.stdout.isatty() else 132)  # pipes: wide enough, no wrapping
    console.print(profile_table())
    console.print(link_table())
    return 0


def profile_table() -> Table:
    table = Table(title=f"Device profiles ({profiles_dir()})",
                  caption="speed: Geekbench 5 single-core score / 1150 (one Intel NUC8-class core)")
    for header in ("profile", "speed", "cores", "threads", "memory MB", "max exit", "link",
                   "down Mbit/s", "up Mbit/s", "RTT ms", "loss"):
        table.add_column(header, no_wrap=True, justify="left" if header in ("profile", "link") else "right")
    for name in available(Profile):
        profile = load_profile(name)
        link = load_link(profile.link)
        max_exit = "deepest" if profile.max_exit is None else str(profile.max_exit)
        table.add_row(name, f"{profile.speed:.3f}", str(profile.cores), str(profile.threads),
                      str(profile.memory_mb), max_exit, link.name, *_link_figures(link)[:4])
    return table


def link_table() -> Table:
    table = Table(title=f"Link presets ({profiles_dir() / 'links'})")
    for header in ("link", "down Mbit/s", "up Mbit/s", "RTT ms", "loss", "jitter ms"):
        table.add_column(header, no_wrap=True, justify="left" if header == "link" else "right")
    table.add_column("source")
    for name in available(LinkSpec):
        link = load_link(name)
        table.add_row(name, *_link_figures(link), link.source)
    return table


def _link_figures(link: LinkSpec) -> list[str]:
    return [f"{link.downlink_mbps:g}", f"{link.uplink_mbps:g}", f"{link.latency_ms:g}",
            f"{link.loss:.1%}", f"{link.jitter_ms:g}"]
