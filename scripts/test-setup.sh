#!/usr/bin/env bash
# System packages the test suite needs (installed once; a no-op when present).
# Stages that need a browser or a database add their packages here.
set -uo pipefail

# Headless browser for the dashboard test (mlplatform_tests/integration/test_dashboard_browser.py).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then as_root=(); else as_root=(sudo -n); fi
    export DEBIAN_FRONTEND=noninteractive
    if ! { "${as_root[@]}" apt-get update -qq >/dev/null &&
           "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
        echo "test-setup: could not install Debian's chromium; the dashboard browser test will be skipped" >&2
    fi
fi
# PostgreSQL server binaries for the PostgreSQL tests (mlplatform_tests/postgres.py starts a private
# server from them; no system service is used).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    if [ "$(id -u)" = 0 ]; then as_root=(); else as_root=(sudo -n); fi
    export DEBIAN_FRONTEND=noninteractive
    if ! { "${as_root[@]}" apt-get update -qq >/dev/null &&
           "${as_root[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }; then
        echo "test-setup: could not install Debian's postgresql; the PostgreSQL tests will be skipped" >&2
    fi
fi
exit 0
