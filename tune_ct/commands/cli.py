"""`tune-ct COMMAND ...` (and `python -m tune_ct COMMAND ...`): every `python -m tune_ct.X` command by name."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "search": "run a hyperparameter search (Ray Tune + Optuna + ASHA), test and register the winner",
    "data": "scan a dataset, update its locked manifest, print what was found",
    "evaluate": "evaluate a model on the locked test split",
    "promote": "promote a registered model to @champion if it passes the gates",
    "predict": "classify films with a model",
    "report": "write a Markdown report of a search",
    "origins": "leave-one-origin-out check: did the model learn the disease or the hospital?",
    "clean": "list what searches keep on disk (caches, checkpoints) and remove what is no longer needed",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: tune-ct COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(
        f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()) + "\n\n`tune-ct COMMAND --help` for its options"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(f"tune_ct.commands.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
