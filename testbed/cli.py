"""The `testbed` command line: one subcommand per user task, each handled in its role's package.

Handlers are imported lazily so that `testbed validate` answers without importing torch.
"""

import argparse
import importlib
import sys

from testbed.errors import UserError

# subcommand -> (module, handler function, parser builder function, one-line help)
COMMANDS = {
    "validate": ("testbed.config.commands", "validate", "add_validate_args",
                 "check scenario, profile, link and stress files without running anything"),
    "profiles": ("testbed.config.commands", "profiles", "add_profiles_args",
                 "list device profiles and link presets with their key figures"),
    "data": ("testbed.data.commands", "data", "add_data_args",
             "build or inspect the offline speech corpus"),
    "pretrain": ("testbed.model.commands", "pretrain", "add_pretrain_args",
                 "SSL-pretrain the tiny backbone on the unlabeled corpus (cached)"),
    "calibrate": ("testbed.emulation.commands", "calibrate", "add_calibrate_args",
                  "measure how faithfully this host emulates each profile's speed and link"),
    "run": ("testbed.launch.commands", "run", "add_run_args",
            "run a scenario: an aggregator and one process per client; results in runs/"),
    "monitor": ("testbed.monitor.commands", "monitor", "add_monitor_args",
                "live dashboard of a running run (directory or PUB address), or replay a finished one"),
    "report": ("testbed.monitor.commands", "report", "add_report_args",
               "write report.md and plots/*.png of a run directory from its events"),
    "compare": ("testbed.compare.commands", "compare", "add_compare_args",
                "run several strategies under the identical fleet, data and seeds; one table, one plot"),
    "results": ("testbed.compare.commands", "results", "add_results_args",
                "docs/results.md from compare directories: tables, plots and the paper's claims checked"),
    "stress": ("testbed.stress.commands", "stress", "add_stress_args",
               "scripted faults and hostile input against live runs; PASS/FAIL per check"),
    "aggregator": ("testbed.launch.commands", "aggregator", "add_aggregator_args",
                   "multi-host: run the aggregator of a scenario, clients connect over TCP"),
    "client": ("testbed.launch.commands", "client", "add_client_args",
               "multi-host: run one client, connecting to an aggregator"),
    "keys": ("testbed.launch.commands", "keys", "add_keys_args",
             "make CURVE keys for a multi-host run"),
    "doctor": ("testbed.doctor", "doctor", "add_doctor_args",
               "what this installation and host offer a run (versions, cores, memory, backends, cache), "
               "to paste into a bug report"),
}


DESCRIPTION = ("Emulate a heterogeneous edge fleet fine-tuning a self-supervised speech model with early exits: "
               "one process per device, throttled by its profile, federated over ZeroMQ. Start with "
               "`testbed run scenarios/smoke.yaml`; `testbed COMMAND --help` tells more.")


def build_parser() -> argparse.ArgumentParser:
    from testbed import __version__

    parser = argparse.ArgumentParser(prog="testbed", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"testbed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, _, add_args, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        getattr(importlib.import_module(module), add_args)(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, handler, _, _ = COMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), handler)(args) or 0)
    except UserError as error:
        print(f"testbed {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # some say where they stopped and how to continue
        print(f"testbed {args.command}: {interrupt or 'interrupted'}", file=sys.stderr)
        return 130
