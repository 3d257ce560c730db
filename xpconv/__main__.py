"""``python -m xpconv``: the same as the ``xpconv`` command (see :mod:`xpconv.cli`)."""

import sys

from xpconv.cli import main

if __name__ == "__main__":
    sys.exit(main())
