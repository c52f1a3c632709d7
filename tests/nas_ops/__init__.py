"""Tests of the nas_ops package (op specs, blocks, architectures, counting, net.config, ONNX, spaces)."""
