"""``python -m bpr``: the same as the ``bpr`` console script."""

from bpr.cli import run

run()
