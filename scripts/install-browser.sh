#!/usr/bin/env bash
# The headless browser the dashboard test drives with selenium: Debian's chromium and
# its chromedriver (/usr/bin/chromium, /usr/bin/chromedriver; selenium-manager never
# downloads one). Idempotent; needs root.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
if [[ $(id -u) != 0 ]]; then
  echo "need root to install chromium (apt-get install chromium chromium-driver)" >&2
  exit 1
fi
echo "installing chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
