"""``uniql.models``: a model in the C runtime (``uq_hy_*``: one runtime for every layer kind).

- :mod:`~uniql.models.runtime` -- :class:`~uniql.models.runtime.Model`, the one model class of every architecture
  (sequences, scoring, generation, per-layer keep sizes, the compression pipeline's per-layer pieces), the int4 /
  int8 weight holders, the Llama / Qwen2 config and tensor reader;
- :mod:`~uniql.models.hybrid` -- the Mamba2, Nemotron-H and Bamba configs and tensor reader;
- :mod:`~uniql.models.keep` -- the keep-size rule and the layer-wise allocation: a global rate -> per-layer sizes;
- :mod:`~uniql.models.batch` -- several sequences decoded together over one model (the server's engine);
- :mod:`~uniql.models.elastic_memory` -- memory that follows the rate (``ElasticModel.resize``).

An artifact loads as :class:`uniql.formats.artifact.ElasticModel`, the model plus ``set_rate``.
"""
