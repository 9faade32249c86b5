"""The HTTP server (FastAPI) and its web page: ``fashionlens serve MODEL_DIR``."""
