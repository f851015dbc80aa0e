"""`python -m cvpipe.cli ...`, the same as the `cvpipe` command."""

import sys

from cvpipe.cli import main

sys.exit(main())
