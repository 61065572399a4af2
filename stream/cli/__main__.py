"""``python -m stream.cli``: the ``streamdrift`` command."""

import sys

from stream.cli import main

sys.exit(main())
