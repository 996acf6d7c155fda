"""CLI of the device emulation: `testbed calibrate`."""

from __future__ import annotations

import argparse
import sys

from testbed.errors import UserError


def add_calibrate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profiles", nargs="*", help="profile names or YAML files (default: every profile)")
    parser.add_argument("--links", default=None,
                        help="comma-separated link presets to calibrate (default: the named profiles' links, "
                             "or every preset)")
    parser.add_argument("--repeats", type=int, default=3, help="compute runs per profile; the median counts")
    parser.add_argument("--no-links", action="store_true", help="calibrate compute only")
    parser.add_argument("--no-compute", action="store_true", help="calibrate links only")
    parser.add_argument("--backend", choices=("user", "kernel"), default="user",
                        help="pace compute by duty cycle (user) or a cgroup CPU quota (kernel)")
    parser.add_argument("--headroom", type=float, default=0.75,
                        help="share of the host's cores the dilation plans to use (as emulation.headroom)")


def calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from testbed.config.loader import available, load_link, load_profile
    from testbed.config.schema import EmulationSpec, LinkSpec, Profile
    from testbed.emulation.calibrate import calibrate_compute, calibrate_link, worst_ratio_error
    from testbed.emulation.dilation import host_cores

    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: must be >= 1")
    if not 0 < args.headroom <= 1:
        raise UserError(f"--headroom {args.headroom}: must be in (0, 1]")
    profiles = [load_profile(name) for name in (args.profiles or available(Profile))]
    emulation = EmulationSpec(headroom=args.headroom)
    console = Console(width=None if sys.stdout.isatty() else 132)
    if args.backend == "kernel":
        from testbed.emulation.kernel import probe_kernel_backend

        support = probe_kernel_backend()
        if not support.cpu:
            raise UserError(f"--backend kernel: no cgroup CPU quota here ({support.describe()})")
        console.print(f"host: {host_cores(emulation)} cores; {support.describe()}; compute paced by a cgroup CPU "
                      "quota; links shaped in the transport")
    else:
        console.print(f"host: {host_cores(emulation)} cores; user backend (duty cycle, shaping in the transport)")
    if not args.no_compute:
        results = calibrate_compute(profiles, emulation, args.repeats, kernel=args.backend == "kernel")
        table = Table(title="Compute: requested vs achieved speed (host cores the device is worth)")
        for header in ("profile", "cpus", "threads", "dilation", "requested", "achieved", "error"):
            table.add_column(header, justify="left" if header == "profile" else "right")
        for result in results:
            table.add_row(result.profile, str(result.cpus), str(result.threads), f"{result.dilation:.2f}",
                          f"{result.requested:.3f}", f"{result.achieved:.3f}", f"{result.error:+.1%}")
        console.print(table)
        if len(results) > 1:
            console.print(f"worst compute-time ratio error between two profiles: {worst_ratio_error(results):.1%}")
    if not args.no_links:
        names = (args.links.split(",") if args.links else
                 sorted({profile.link for profile in profiles}) if args.profiles else available(LinkSpec))
        table = Table(title="Links: expected (model, loss included) vs achieved")
        for header in ("link", "RTT ms", "achieved", "error", "down Mbit/s", "achieved", "error",
                       "up Mbit/s", "achieved", "error"):
            table.add_column(header, justify="left" if header == "link" else "right")
        for name in names:
            measured = calibrate_link(load_link(name))
            cells = [measured.link]
            for expected, achieved in (measured.rtt_ms, measured.down_mbps, measured.up_mbps):
                cells += [f"{expected:.2f}", f"{achieved:.2f}", f"{achieved / expected - 1:+.1%}"]
            table.add_row(*cells)
        console.print(table)
    return 0
