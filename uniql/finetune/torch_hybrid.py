"""Former home of the Mamba2 / Nemotron-H / Bamba fine-tuning twin; the one twin of every family is
:mod:`uniql.finetune.twin`. These names stay importable from here."""
from uniql.finetune.twin import TwinModel as HybridTorchModel, ssd_scan

__all__ = ["HybridTorchModel", "ssd_scan"]
