#!/usr/bin/env bash
# System packages the test suite needs (installed once; a no-op when present).
# Stages that need a browser or a database add their packages here.
set -euo pipefail
exit 0
