"""``python -m d2lx`` is the ``d2lx`` command."""

import sys

from d2lx.cli import main

sys.exit(main())
