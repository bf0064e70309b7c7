"""Models: the seed network (`features` + `classifier`) and its parameter summary."""

from .layers import FastDropout
from .seed_cnn import SeedCNN, keras_init
from .summary import LayerRow, ParamCounts, count_params, layer_rows

__all__ = ["FastDropout", "LayerRow", "ParamCounts", "SeedCNN", "count_params", "keras_init", "layer_rows"]
from .backbones import BACKBONES, BackboneClassifier, HeadConfig, Preprocessing, load_backbone_weights  # noqa: E402

__all__ += ["BACKBONES", "BackboneClassifier", "HeadConfig", "Preprocessing", "load_backbone_weights"]
from .backbones import installed_backbones, new_head, weights_missing  # noqa: E402

__all__ += ["installed_backbones", "new_head", "weights_missing"]
