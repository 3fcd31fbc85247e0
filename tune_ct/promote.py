"""`python -m tune_ct.promote`: see tune_ct/commands/promote.py."""

import sys

from tune_ct.commands.promote import main

if __name__ == "__main__":
    sys.exit(main())
