"""The deployment pool: its limit comes from the settings and is set when the instance is prepared.

The pool queues sentiment_endpoint visibly in the UI; it is not what keeps two deployments apart. Dagster
claims a pool slot with SELECT ... FOR UPDATE SKIP LOCKED, which SQLite ignores, and under load two runs
got the one slot at once (often on SQLite, once on PostgreSQL in a full test run). The platform's
deployment lock does that, on every storage: see mlplatform_tests/defs/test_deployment_lock.py.
"""

from __future__ import annotations

import pytest

from mlplatform.instance import open_instance

pytestmark = pytest.mark.filterwarnings("ignore")


def test_the_instance_limits_the_deployment_pool_from_settings(home):
    home.settings_file.write_text("[execution]\ndeployment_pool_limit = 3\n")
    with open_instance(home) as instance:
        pool_config = instance.event_log_storage.get_pool_config()
        assert pool_config.default_pool_limit == 3
        assert pool_config.pool_granularity.value == "op"
