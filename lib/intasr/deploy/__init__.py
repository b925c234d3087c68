"""Deployment: ONNX export (integer-only, float, Q/DQ), onnxruntime runners, TensorRT / CUDA paths, latency benchmark."""
