"""What an operator runs besides the job: ``doctor`` (read-only, before the first run), the
operator tools acting on one order or event, retention.

May import: ``run``, ``decisions``, ``detection``, ``delivery``, ``provider``, ``shop`` and the root
basics; not the regularizer (``operator_tools.regularize_order`` is handed one).
"""
