"""``uniql.models``: a model in the C runtime (``uq_hy_*``: one runtime for every layer kind).

- :mod:`~uniql.models.runtime` -- the model class over the C runtime (sequences, scoring, generation, keep sizes,
  the compression pipeline's per-layer pieces), int4 / int8 weight holders, Llama / Qwen2 configs and loading;
- :mod:`~uniql.models.hybrid` -- Mamba2, Nemotron-H and Bamba configs and loading;
- :mod:`~uniql.models.batch` -- several sequences decoded together over one model (the server's engine);
- :mod:`~uniql.models.elastic_memory` -- memory that follows the rate (``model.resize``).
"""
