#!/usr/bin/env bash
# Regenerates cli/tests/data/axon_schema.sql: the database that Axon BBS's
# own `manage.py migrate` creates (Django 5.0.6, Axon's migrations), dumped
# as SQL. The tests build the Axon install's database from it.
#
#   scripts/axon-schema.sh AXON_CHECKOUT > cli/tests/data/axon_schema.sql
#
# AXON_CHECKOUT is a checkout of github.com/achgulp/axon_bbs (only its *.py
# files are used; AXON_COMMIT names the commit when it is not a git checkout). Needs python3 and PyPI for the virtualenv. Nothing is
# written into the checkout: the migration runs on a copy under a temp dir.
set -euo pipefail
src=${1:?usage: axon-schema.sh AXON_CHECKOUT}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv" >&2
# requirements.txt pins Django 5.0.6 and friends; corsheaders is in
# INSTALLED_APPS without being listed there. The heavy optional parts
# (llama-cpp, meshtastic, numpy, pyaudio) are not needed to migrate.
"$work/venv/bin/pip" install -q 'Django==5.0.6' 'djangorestframework==3.15.1' \
    'djangorestframework-simplejwt==5.3.1' django-cors-headers 'python-dotenv==1.0.1' \
    'cryptography==42.0.8' requests pysocks Pillow python-magic pytz >&2
mkdir -p "$work/axon"
(cd "$src" && find . -name '*.py' -not -path './frontend/*' -not -path './tools/*' -print0 |
    xargs -0 cp --parents -t "$work/axon")
mkdir -p "$work/axon/data" "$work/axon/logs"
(cd "$work/axon" && SECRET_KEY=schema-only-not-secret "$work/venv/bin/python" manage.py migrate >&2)
commit=${AXON_COMMIT:-$(git -C "$src" rev-parse --verify -q HEAD || echo unknown)}
echo "-- Axon BBS database as created by its own 'manage.py migrate' (Django 5.0.6),"
echo "-- axon_bbs commit $commit; regenerate with scripts/axon-schema.sh."
"$work/venv/bin/python" - "$work/axon/data/axon_bbs.sqlite3" <<'PY'
import sqlite3, sys
for line in sqlite3.connect(sys.argv[1]).iterdump():
    print(line)
PY
