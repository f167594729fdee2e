"""`python -m gateway.cli` is `lore-gateway`."""

import sys

from gateway.cli import main

sys.exit(main())
