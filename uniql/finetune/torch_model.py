"""Former home of the Llama / Qwen2 fine-tuning twin; the one twin of every family is :mod:`uniql.finetune.twin`.
These names stay importable from here."""
from uniql.finetune.twin import LoRA, TwinModel as ElasticTorchModel, load_twin, read_float_tensors, twin_model

__all__ = ["ElasticTorchModel", "LoRA", "load_twin", "read_float_tensors", "twin_model"]
