import sys

from facekd.app.cli import main

sys.exit(main())
