"""`python -m slimkit.cli`: same as the `slimkit` command."""

import sys

from slimkit.cli import main

sys.exit(main())
