"""The scoring stage: loading a registered ONNX model and scoring batch files (files) and single texts (lean)."""
