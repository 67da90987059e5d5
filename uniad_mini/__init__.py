"""uniad_mini: a small, readable UniAD (You et al., "A Unified Model for Multi-class Anomaly Detection", NeurIPS 2022).

    from uniad_mini import UniAD, MVTecAD
    model = UniAD().fit(MVTecAD("path/to/mvtec", split="train"))
    print(model.evaluate(MVTecAD("path/to/mvtec", split="test")))
    test = open_data("data.toml", "test")   # any DATA_ROOT: MVTec folder, .toml folder layout, VisA
    check_data(test)                        # every problem of every file, in one DataError
"""
from .checks import check_data
from .data import MVTecAD
from .errors import DataError
from .features import Cache
from .layouts import FolderAD, VisA, open_data
from .model import UniAD
from .synthetic import SyntheticAD

__all__ = ["UniAD", "MVTecAD", "FolderAD", "VisA", "open_data", "check_data", "SyntheticAD", "Cache", "DataError"]
__version__ = "0.1.0"
