"""``python -m uniql.finetune`` / ``torchrun --nproc-per-node N -m uniql.finetune ART -o OUT ...``."""
import sys

from uniql.finetune import main

sys.exit(main())
