"""Models: the seed network (`features` + `classifier`), pretrained backbones by name, and parameter summaries."""

from .backbones import (
    BACKBONES,
    BackboneClassifier,
    HeadConfig,
    Preprocessing,
    installed_backbones,
    load_backbone_weights,
    new_head,
    weights_missing,
)
from .layers import FastDropout
from .seed_cnn import SeedCNN, keras_init
from .summary import LayerRow, ParamCounts, count_params, layer_rows

__all__ = ["BACKBONES", "BackboneClassifier", "FastDropout", "HeadConfig", "LayerRow", "ParamCounts", "Preprocessing",
           "SeedCNN", "count_params", "installed_backbones", "keras_init", "layer_rows", "load_backbone_weights",
           "new_head", "weights_missing"]
