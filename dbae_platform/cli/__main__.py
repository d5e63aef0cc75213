"""`python -m dbae_platform.cli`: the `dbae` command."""

import sys

from dbae_platform.cli import main

sys.exit(main())
