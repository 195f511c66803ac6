"""``python -m uniql.bench``: speed and memory of the C runtime (see uniql.bench);
``python -m uniql.bench quality ...``: perplexity side by side with llama.cpp (uniql.bench.quality)."""
import sys

from uniql.bench import main

if __name__ == "__main__":
    sys.exit(main())
