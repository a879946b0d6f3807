"""Everything that decides and changes order state: plain Python and SQLAlchemy Core.

Nothing here imports Dagster; ``regularization_pipeline.defs`` adapts it. The subpackages, from
the bottom of the import graph up (a module imports only what is below it):

- root basics: ``exceptions``, ``redaction``, ``clock``, ``verdicts``, ``errors``, ``config_files``
- ``shop``: the mapping, engines, our tables, migrations, the run lock
- ``detection``, ``provider``, ``delivery`` (side by side): orphans, inconsistency scans, held
  orders; asking the payment provider, rate-limited; OrderCompleted, signing, the outbox, publishers
- ``decisions``: the run context, verification, the compare-and-set, the one write step
- ``alerting``: incidents, channels, formats
- ``run`` (beside ``decisions``): a run's options and summary
- ``regularizer``: the run itself
- ``operations`` (beside the regularizer): doctor, operator tools, retention
"""
