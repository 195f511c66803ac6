"""``uniql.formats``: what goes in and out of files.

- :mod:`~uniql.formats.safetensors` -- the safetensors reader / writer (C, memory-mapped);
- :mod:`~uniql.formats.checkpoint` -- Hugging Face checkpoint directories (config, shards, tokenizer) and
  ``uniql.load`` (a checkpoint or an artifact);
- :mod:`~uniql.formats.artifact` -- the elastic artifact: metadata, the per-layer files, the loader at any rate;
- :mod:`~uniql.formats.gguf` -- GGUF (llama.cpp) to a Hugging Face checkpoint directory.
"""
