#!/usr/bin/env bash
# The installer ships with nbship (`nbship container build` runs it when a tool is
# missing); this repo's test command runs the same file.
exec bash "$(dirname "$0")/../src/nbship/deploy/install-container-tools.sh" "$@"
