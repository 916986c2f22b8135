"""``python -m surgery``: the same command as the ``surgery`` console script."""

from __future__ import annotations

import sys

from surgery.cli import main

if __name__ == "__main__":
    sys.exit(main())
