"""Normalization, embedding and other network ops (filled in by the ONNX issue)."""
