"""Backends for the heavy stateless encoder: PyTorch, ONNX Runtime, TensorRT."""
