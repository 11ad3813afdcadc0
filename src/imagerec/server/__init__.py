"""The HTTP service: create_app (FastAPI), dynamic batching, limits, KServe v2 routes, the web page."""
