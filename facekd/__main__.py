import sys

from facekd.cli import main

sys.exit(main())
