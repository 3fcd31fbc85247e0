"""`python -m tune_ct COMMAND ...`: the same as the `tune-ct` console script."""

import sys

from tune_ct.commands.cli import main

sys.exit(main())
