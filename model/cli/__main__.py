"""``python -m model.cli``: the model's commands without the node."""

import sys

from model.cli import main

sys.exit(main())
