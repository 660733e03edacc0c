"""`python -m effectd.cli`: the `effectd` command."""

import sys

from effectd.cli.launch import main

sys.exit(main())
