"""Training: one loop, freezing, the feature cache, precision."""

from .batches import StreamBatches, StreamLoader, StreamPass, TensorBatches, images_to_tensor
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .feature_cache import compute_features, split_frozen, stored_features
from .freezing import freeze, train_mode, trainable_parameters, unfreeze
from .loop import (
           EpochRecord,
           FitHooks,
           FitPlan,
           FitState,
           ProgressListener,
           SilentProgress,
           autocast,
           evaluate,
           fit,
           train_one_epoch,
)
from .optim import make_optimizer
from .precision import Precision, cpu_flags, resolve_precision

__all__ = ["CHECKPOINT_FILE", "FitHooks", "FitPlan", "FitState", "load_checkpoint", "save_checkpoint", "EpochRecord", "Precision", "ProgressListener", "SilentProgress", "StreamBatches", "StreamLoader",
           "StreamPass", "TensorBatches", "autocast", "compute_features",
           "cpu_flags", "evaluate", "fit", "freeze", "images_to_tensor", "make_optimizer", "resolve_precision",
           "split_frozen", "stored_features", "train_mode", "train_one_epoch", "trainable_parameters", "unfreeze"]
