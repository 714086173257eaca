"""`python -m facekd ...` (and `torchrun ... -m facekd ...`) is the `facekd` command. An entry
point is the one module of the core allowed to reach up into the application layer, since
it only hands the command line over to it."""

import sys

from facekd.app.cli import main

sys.exit(main())
