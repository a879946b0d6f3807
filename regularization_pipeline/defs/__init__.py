"""Dagster adapters over ``regularization_pipeline.core``; assembled in ``regularization_pipeline.definitions``."""
