"""Tracking: MLflow runs (the only place that imports mlflow) and the console log of a job."""
