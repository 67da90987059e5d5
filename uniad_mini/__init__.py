"""uniad_mini: a small, readable UniAD (You et al., "A Unified Model for Multi-class Anomaly Detection", NeurIPS 2022).

    from uniad_mini import UniAD, MVTecAD
    model = UniAD().fit(MVTecAD("path/to/mvtec", split="train"))
    print(model.evaluate(MVTecAD("path/to/mvtec", split="test")))
"""
from .data import DataError, MVTecAD
from .features import Cache
from .model import UniAD
from .synthetic import SyntheticAD

__all__ = ["UniAD", "MVTecAD", "SyntheticAD", "Cache", "DataError"]
__version__ = "0.1.0"
