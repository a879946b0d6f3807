"""docs/reference.md is generated from the code and must be what the generator writes now."""

import os
import re
import subprocess
import sys

import pytest

from regularization_pipeline import cli
from tests.support import ROOT
from tools import reference

REFERENCE = ROOT / "docs" / "reference.md"
# A whole name: `REGULARIZATION_DELIVERY_*`, a family, is not one.
VARIABLE = re.compile(r"REGULARIZATION_[A-Z_]*[A-Z](?![A-Z_])")
# Read by docker-compose.yml only (the image tag, the host's config folder), never by the code.
DEPLOYMENT_ONLY = {"REGULARIZATION_IMAGE", "REGULARIZATION_CONFIG_DIR"}


def test_the_reference_in_docs_is_what_the_code_generates(tmp_path):
    # A fresh interpreter, as `make reference` runs it, with this machine's settings set: the
    # generator must give the defaults all the same.
    fresh = tmp_path / "reference.md"
    env = {**os.environ, "REGULARIZATION_SCHEDULE_CRON": "* * * * *"}
    subprocess.run(
        [sys.executable, "-m", "tools.reference", str(fresh)],
        cwd=REFERENCE.parent.parent,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert REFERENCE.read_text(encoding="utf-8") == fresh.read_text(encoding="utf-8"), (
        "docs/reference.md is stale: run `make reference` and commit it"
    )


def test_every_variable_the_docs_and_the_deployment_name_is_one_the_code_reads():
    documented = set(VARIABLE.findall(REFERENCE.read_text(encoding="utf-8")))
    assert documented == set(reference.environment_variables())
    sources = [ROOT / "README.md", ROOT / ".env.example", ROOT / "docker-compose.yml"]
    sources += sorted((ROOT / "docs").glob("*.md"))
    for source in sources:
        named = set(VARIABLE.findall(source.read_text(encoding="utf-8"))) - DEPLOYMENT_ONLY
        assert named <= documented, f"{source.name} names {sorted(named - documented)}: not read"
    # The deployer's one list: every variable has its line in .env.example.
    assert documented <= set(VARIABLE.findall((ROOT / ".env.example").read_text()))


def test_an_exit_code_without_a_meaning_stops_the_generator(monkeypatch):
    monkeypatch.setattr(cli, "EXIT_SOMETHING_NEW", 9, raising=False)
    with pytest.raises(SystemExit, match="exit codes without a meaning.*EXIT_SOMETHING_NEW"):
        reference.exit_codes_section()
