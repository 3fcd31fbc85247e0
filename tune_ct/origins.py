"""`python -m tune_ct.origins`: see tune_ct/commands/origins.py."""

import sys

from tune_ct.commands.origins import main

if __name__ == "__main__":
    sys.exit(main())
