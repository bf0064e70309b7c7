"""Models out of transferkit: ONNX and TorchScript files that take uint8 images, checked against PyTorch."""

from .exporting import FORMATS, ExportResult, export

__all__ = ["FORMATS", "ExportResult", "export"]
