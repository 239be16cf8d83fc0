"""The abalone model page: its FastAPI app, MLflow reads bounded in time, and HTML rendering."""
