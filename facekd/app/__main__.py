"""`python -m facekd.app ...` (and `torchrun ... -m facekd.app ...`) is the `facekd` command.
It lives in the application layer, beside the CLI it runs: the core package (facekd/)
imports nothing above it, not even for an entry point."""

import sys

from facekd.app.cli import main

sys.exit(main())
