"""Everything that decides and changes order state: plain Python and SQLAlchemy Core.

Nothing here imports Dagster; ``regularization_pipeline.defs`` adapts it.
"""
