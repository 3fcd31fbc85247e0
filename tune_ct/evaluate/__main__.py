"""`python -m tune_ct.evaluate`: see tune_ct/commands/evaluate.py."""

import sys

from tune_ct.commands.evaluate import main

sys.exit(main())
