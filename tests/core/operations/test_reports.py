"""The audit preview's table: one line per audit row, whatever a reason's text holds."""

from regularization_pipeline.core.operations.reports import AUDIT_COLUMNS, markdown_table


def test_a_preview_row_stays_one_row_of_its_table_whatever_its_text():
    row = ("7", "held", "amount | currency\nmismatch", "", "19.90", "", "EUR", "", "2026-01-01")
    lines = markdown_table(AUDIT_COLUMNS, [row]).splitlines()

    assert len(lines) == 3  # the header, its rule, the one row
    assert lines[0] == "| " + " | ".join(AUDIT_COLUMNS) + " |"
    cells = [c.strip() for c in lines[2].replace("\\|", "¦").split("|")[1:-1]]
    assert cells == [
        "7",
        "held",
        "amount ¦ currency mismatch",
        "",
        "19.90",
        "",
        "EUR",
        "",
        "2026-01-01",
    ]
