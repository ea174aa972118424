"""``python -m modelhost`` is the ``modelhost`` command."""

import sys

from modelhost.cli.main import main

sys.exit(main())
