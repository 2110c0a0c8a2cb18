"""``python -m olm`` runs the command line."""

import sys

from olm.cli import main

sys.exit(main())
