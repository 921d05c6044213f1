"""``python -m fastattn``: same as the ``fastattn`` console script."""

import sys

from fastattn.cli import main

if __name__ == "__main__":
    sys.exit(main())
