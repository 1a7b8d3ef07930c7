#!/usr/bin/env bash
# In CI (CI=true, running as root on Debian), install headless Chromium so that the test
# rendering the HTML report runs there. Elsewhere do nothing: that test then skips and
# says why. Called by `make test`.
set -euo pipefail
if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  echo "CI: installing chromium for the report-rendering test"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
