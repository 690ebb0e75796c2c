"""`python -m cadcoder` runs the `cadcoder` command."""

import sys

from cadcoder.cli import main

sys.exit(main())
