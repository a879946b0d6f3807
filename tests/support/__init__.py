"""What the tests share: databases, rows read back, real HTTP and SMTP peers, Dagster helpers.

Import from the module that says what you need (``tests.support.rows``,
``tests.support.databases`` ...); fixtures live in ``tests/conftest.py``.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
