"""`python -m testbed` runs the command-line interface."""

from testbed.cli import main

raise SystemExit(main())
