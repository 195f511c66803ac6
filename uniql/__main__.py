"""``python -m uniql``: the same command line as the ``uniql`` console script (see uniql.cli)."""
import sys

from uniql.cli import main

sys.exit(main())
