"""Tick alert sensors against a shops file, in a process of its own, as the daemon would: each
sensor with its cursor kept in a file between calls. Prints one JSON line, sensor -> what the
tick said (its skip message, which names each alert it raised).

    REGULARIZATION_SHOPS_FILE=shops.yaml DAGSTER_HOME=... \
        python -m tests.support.shop_alerts CURSORS.json alert_on_failed_run alert_on_held_orders

The shops file is read when the code location loads: a test of many shops ticks them here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg


def main(cursors_file: str, names: list[str]) -> int:
    from regularization_pipeline.defs import alerts
    from regularization_pipeline.defs.resources import AlertResource, AppDatabaseResource

    path = Path(cursors_file)
    cursors = json.loads(path.read_text()) if path.exists() else {}
    sensors = {sensor.name: sensor for sensor in alerts.ALERT_SENSORS}
    said = {}
    with dg.DagsterInstance.get() as instance:
        for name in names:
            resources = {
                "alerts": AlertResource.from_env(),
                "app_db": AppDatabaseResource.from_env(),
            }
            with dg.build_sensor_context(
                instance=instance, cursor=cursors.get(name), resources=resources
            ) as context:
                data = sensors[name].evaluate_tick(context)
            cursors[name] = data.cursor
            said[name] = data.skip_message or ""
    path.write_text(json.dumps(cursors))
    print(json.dumps(said))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
