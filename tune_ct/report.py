"""`python -m tune_ct.report`: see tune_ct/commands/report.py."""

import sys

from tune_ct.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
