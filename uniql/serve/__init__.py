"""``uniql.serve``: serving an artifact.

- :mod:`~uniql.serve.server` -- the OpenAI-compatible HTTP server (``uniql serve``), batched decoding;
- :mod:`~uniql.serve.adaptive` -- the controller that picks the pruning rate from measured signals (latency,
  memory, CPU) and the adaptive generation loop.
"""
