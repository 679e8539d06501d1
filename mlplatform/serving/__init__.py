"""The real-time endpoint (FastAPI on uvicorn, ONNX Runtime)."""
