"""`python -m tune_ct.data`: see tune_ct/commands/data.py."""

import sys

from tune_ct.commands.data import main

sys.exit(main())
