"""`python -m effectd.cli`: the `effectd` command."""

import sys

from effectd.cli.main import main

sys.exit(main())
