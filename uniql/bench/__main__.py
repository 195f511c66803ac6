"""``python -m uniql.bench``: speed and memory of the C runtime (see uniql.bench)."""
import sys

from uniql.bench import main

if __name__ == "__main__":
    sys.exit(main())
