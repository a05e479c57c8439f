"""`python -m pcdsl.cli`: the `pcdsl` command."""

import sys

from pcdsl.cli import main

sys.exit(main())
