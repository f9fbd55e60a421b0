"""``python -m bpr``: the same as the ``bpr`` console script."""

import sys

from bpr.cli import main

sys.exit(main())
