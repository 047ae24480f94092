"""`python -m services.groups`: run the groups service, or an operator task (`--help`)."""

import sys

from services.groups.entrypoints.cli import main

sys.exit(main())
