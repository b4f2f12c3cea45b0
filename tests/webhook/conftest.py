"""The webhook fixtures (a running intake and the Bitbucket fake), for the test modules beside test_webhook."""

from tests.webhook.test_webhook import bitbucket, webhook  # noqa: F401
