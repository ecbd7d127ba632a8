"""``python -m fabric``: the command line (see fabric.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
