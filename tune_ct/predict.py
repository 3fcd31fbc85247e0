"""`python -m tune_ct.predict`: see tune_ct/commands/predict.py."""

import sys

from tune_ct.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
