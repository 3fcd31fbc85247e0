"""`python -m tune_ct.search`: see tune_ct/commands/search.py."""

import sys

from tune_ct.commands.search import main

if __name__ == "__main__":
    sys.exit(main())
