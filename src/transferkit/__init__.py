"""transferkit: fast, measurable, reproducible transfer learning for image classification."""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .experiments import FinetuneResult, SplitResult, finetune, predict, run_split  # noqa: E402
from .reporting import load_model  # noqa: E402

__all__ = ["FinetuneResult", "finetune", "predict", "SplitResult", "UserError", "__version__", "load_model", "run_split"]
