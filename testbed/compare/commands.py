"""CLI: `testbed compare SCENARIO --strategies a,b,... [--seeds N]`, or `testbed compare --resume DIR`;
`testbed results COMPARE_DIR... [--out docs/results.md]`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from testbed.errors import UserError


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="scenario YAML (not with --resume)")
    parser.add_argument("--resume", metavar="DIR",
                        help="finish the comparison in DIR as it began: finished runs are kept, interrupted ones "
                             "resumed, missing ones made (only --target may be given with it)")
    parser.add_argument("--strategies",
                        help="comma-separated strategy names, e.g. fedavg_full,layerwise,depth_aware; "
                             "`centralized` adds the baseline with all data in one process")
    parser.add_argument("--seeds", type=int, default=1, help="runs per strategy: the scenario's seed, +1, ...")
    parser.add_argument("--policy", help="exit policy for every run (default: the scenario's)")
    parser.add_argument("--target", type=float, help="target accuracy (0-1) for time to target "
                        "(default: fedavg_full's final accuracy minus 2 points, when it is compared)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario field for every run, e.g. --set rounds=5")
    parser.add_argument("--out", help="compare directory (default: compare/<scenario>-<time>)")


def compare(args: argparse.Namespace) -> int:
    from testbed.compare.runner import resume_compare

    if args.target is not None and not 0 < args.target <= 1:
        raise UserError(f"--target {args.target}: an accuracy in (0, 1]")
    if args.resume:
        given = [name for name, value in (("SCENARIO", args.scenario), ("--strategies", args.strategies),
                                          ("--seeds", args.seeds != 1), ("--policy", args.policy),
                                          ("--set", args.overrides), ("--out", args.out)) if value]
        if given:
            raise UserError(f"--resume {args.resume}: takes the comparison's own scenario and plan; drop "
                            f"{', '.join(given)} (allowed with it: --target)")
        directory, complete = resume_compare(args.resume, args.target)
    else:
        directory, complete = _begin(args)
    print(f"comparison{'' if complete else ' (interrupted: the runs made so far)'} in {directory}: "
          "compare.md, compare.json, accuracy_vs_time.png"
          + ("" if complete else f"; `testbed compare --resume {directory}` finishes it"))
    return 0 if complete else 130


def _begin(args: argparse.Namespace) -> tuple[Path, bool]:
    """A new comparison: its compare directory, and whether every run was made."""
    from testbed.compare.runner import compare as run_comparison
    from testbed.strategies import STRATEGIES

    if not args.scenario or not args.strategies:
        raise UserError("a comparison needs a SCENARIO and --strategies (or --resume DIR to finish one)")
    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    unknown = [name for name in strategies if name not in STRATEGIES and name != "centralized"]
    if unknown or not strategies:
        raise UserError(f"--strategies: unknown {', '.join(unknown) or '(none given)'} "
                        f"(allowed: {', '.join(STRATEGIES)}, centralized)")
    if len(set(strategies)) != len(strategies):
        raise UserError(f"--strategies {args.strategies}: each strategy once (seeds repeat it: --seeds N)")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: must be >= 1")
    overrides = [*args.overrides, *([f"exit_policy.name={args.policy}"] if args.policy else [])]
    return run_comparison(args.scenario, strategies, args.seeds, overrides, args.out, args.target)


def add_results_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directories", nargs="+", metavar="COMPARE_DIR",
                        help="compare directories written by `testbed compare`, one per fleet (e.g. paper_fleet, "
                             "mixed_fleet, one with backbone.pretrained: false)")
    parser.add_argument("--out", default="docs/results.md",
                        help="the page to write; each comparison's plot is copied beside it as results-<dir>.png "
                             "(default: docs/results.md)")


def results(args: argparse.Namespace) -> int:
    from testbed.compare.results import write_results

    command = shlex.join(["testbed", "results", *args.directories, "--out", args.out])
    page = write_results(args.directories, args.out, command)
    print(f"wrote {page} from {len(args.directories)} comparison{'s' * (len(args.directories) > 1)}")
    return 0
