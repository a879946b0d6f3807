"""Resources: the application's database, the publishers of OrderCompleted events, the
payment provider, and the alert channels.

Each builds itself from the environment (``from_env``, readers in ``environment.py``), which is how
``definitions.py`` gets them. Secrets never appear in code or run config: the
database URL, the webhook secret, the provider token and the alert channels'
addresses are read through ``dg.EnvVar`` at run time, so the UI shows the
variable's name, never its value.
"""

from regularization_pipeline.defs.resources.alerting import AlertResource
from regularization_pipeline.defs.resources.app_database import AppDatabaseResource
from regularization_pipeline.defs.resources.event_publisher import EventPublisherResource
from regularization_pipeline.defs.resources.payment_gateway import PaymentGatewayResource

__all__ = [
    "AlertResource",
    "AppDatabaseResource",
    "EventPublisherResource",
    "PaymentGatewayResource",
]
