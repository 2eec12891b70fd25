"""``python -m nbxent``: the same command as ``nbxent`` (see ``nbxent.cli``)."""

import sys

from nbxent.cli import main

sys.exit(main())
