"""``python -m fashionlens``: the same as the ``fashionlens`` command."""

import sys

from fashionlens.cli import main

sys.exit(main())
