"""The training stage: fitting candidates (fit), the sparse ONNX text graph (export), evaluation and quality
gates, model selection and the model card inputs, and rebuilding a registered version from its recorded
inputs."""
