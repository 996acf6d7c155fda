"""CLI: `testbed stress [FILES...] [--out DIR] [--quick] [--clock real|events]`."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from testbed.config.names import CLOCKS
from testbed.errors import UserError
from testbed.paths import PROJECT_ROOT

STRESS_DIR = Path("scenarios") / "stress"  # the default files: here, else in the project's checkout


def add_stress_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help=f"stress files (default: every {STRESS_DIR}/*.yaml)")
    parser.add_argument("--out", help="results directory (default: stress/<time>)")
    parser.add_argument("--quick", action="store_true",
                        help="the quick variants: debug backbone, fewer rounds (and dilation 1 under --clock real)")
    parser.add_argument("--clock", choices=CLOCKS, default="events",
                        help="run the tests under this emulated clock, whatever their scenarios say (default: "
                             "%(default)s, which drops the scenarios' dilation: that clock has none); real waits, "
                             "at the dilation the scenarios set")


def default_files() -> list[Path]:
    folder = STRESS_DIR if STRESS_DIR.is_dir() else PROJECT_ROOT / STRESS_DIR
    return sorted(folder.glob("*.yaml"))


def stress(args: argparse.Namespace) -> int:
    from testbed.stress.runner import run_all
    from testbed.stress.spec import load_stress

    files = [Path(f) for f in args.files] or default_files()
    if not files:
        raise UserError(f"no stress files given and none in {STRESS_DIR}/")
    # every file is valid before anything runs
    tests = [load_stress(file, quick=args.quick, clock=args.clock) for file in files]
    names = [test.name for test in tests]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"stress test names must be unique (results/<name>/): {', '.join(twice)} given twice")
    results = Path(args.out) if args.out else Path("stress") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if results.exists() and any(results.iterdir()):
        raise UserError(f"--out {results} exists and is not empty")
    done = run_all(tests, results)
    return 0 if all(result.passed for result in done) else 1
