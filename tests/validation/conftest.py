"""The webhook fixtures (a running intake and the Bitbucket fake), shared with tests/webhook."""

from tests.scheduler.conftest import idle_scheduler, scheduler  # noqa: F401
from tests.webhook.test_webhook import bitbucket, webhook  # noqa: F401
