"""``python -m vidsearch``: the same as the ``vidsearch`` command."""

import sys

from vidsearch.cli import main

sys.exit(main())
