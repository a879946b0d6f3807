"""docs/launching.md's environment is the one `make dev` sets: one environment for every launch."""

import re

from tests.support import ROOT


def test_the_documented_environment_is_the_one_make_dev_sets():
    makefile = (ROOT / "Makefile").read_text()
    demo_env = makefile.split("DEMO_ENV :=", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    make_sets = dict(re.findall(r"(REGULARIZATION_\w+)=(\S+)", demo_env))
    doc = (ROOT / "docs" / "launching.md").read_text()
    block = doc.split("## The environment", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    documented = dict(re.findall(r"export (\w+)=(\S+)", block))
    expected = {k: v.replace("$(CURDIR)", "$PWD") for k, v in make_sets.items()}
    assert {k: documented.get(k) for k in expected} == expected
    assert set(documented) == {*expected, "DAGSTER_HOME", "DAGSTER_PORT"}
    # One port variable, the same in the Makefile and the docs.
    assert "DEV_PORT" not in makefile and "${DAGSTER_PORT:-3000}" in makefile
