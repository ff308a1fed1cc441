#!/usr/bin/env bash
# Regenerate requirements.lock from the current .venv (after changing requirements.txt and re-running setup).
set -euo pipefail
cd "$(dirname "$0")/.."
{ echo "# Generated: pip freeze of a working install (scripts/lock.sh). Used as constraints; edit requirements.txt instead."
  .venv/bin/pip freeze | grep -v -iE "^(torch==|-e |medasr)"; } > requirements.lock
