"""Files in, one validated ``nx.DiGraph`` out: specs (YAML/JSON) and ONNX models."""
