"""`python -m tune_ct.clean`: see tune_ct/commands/clean.py."""

import sys

from tune_ct.commands.clean import main

if __name__ == "__main__":
    sys.exit(main())
