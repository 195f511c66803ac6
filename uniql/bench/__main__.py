"""``python -m uniql.bench``: speed and memory of the C runtime (see uniql.bench);
``python -m uniql.bench quality ...``: perplexity side by side with llama.cpp (uniql.bench.quality)."""
import sys

if len(sys.argv) > 1 and sys.argv[1] == "quality":
    from uniql.bench.quality import main as quality_main

    sys.exit(quality_main(sys.argv[2:]))

from uniql.bench import main  # noqa: E402

sys.exit(main())
