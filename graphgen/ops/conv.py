"""Convolution and pooling ops (filled in by the ONNX issue)."""
