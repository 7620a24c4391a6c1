"""`python -m collector.cli`: the same as the `meter-collector` command."""

import sys

from collector.cli.commands import main

sys.exit(main())
