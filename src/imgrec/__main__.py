"""`python -m imgrec`: the query command (see `imgrec.cli`)."""

import sys

from imgrec.cli import main

sys.exit(main())
