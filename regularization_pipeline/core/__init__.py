"""Everything that decides and changes order state: plain Python and SQLAlchemy Core.

Nothing here imports Dagster; ``regularization_pipeline.defs`` adapts it. The subpackages, from
the bottom of the import graph up (a module imports only what is below it):

- root basics: ``errors``, ``clock``, ``config_files``, ``vocabulary``
- ``shop``: the mapping, engines, our tables, migrations, the run lock
- ``detection``: orphans, inconsistency scans, held orders
- ``delivery``: OrderCompleted, signing, the outbox, publishers
- ``provider``: asking the payment provider, rate-limited
- ``decisions``: the run context, verification, the compare-and-set, the one write step
- ``alerting``: incidents, channels, formats
- ``run``, ``regularizer``: a run's options and summary, and the run itself
- ``operations``: doctor, operator tools, retention
"""
