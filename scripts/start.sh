#!/usr/bin/env bash
# The one command that installs nasweb and starts it with its built-in defaults (SQLite under
# var/, no Redis needed): creates .venv, migrates, creates a demo user and runs a small search.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_venv requirements.txt
PY="$NASWEB_VENV/bin/python"

say "migrating the database"
"$PY" manage.py migrate --noinput

say "demo user"
export NASWEB_DEMO_USER=${NASWEB_DEMO_USER:-demo}
NASWEB_DEMO_PASSWORD=${NASWEB_DEMO_PASSWORD:-demo} "$PY" manage.py shell --no-imports -c '
import os
from django.contrib.auth import get_user_model

username, password = os.environ["NASWEB_DEMO_USER"], os.environ["NASWEB_DEMO_PASSWORD"]
User = get_user_model()
user = User.objects.filter(username=username).first()
if user is not None and user.has_usable_password():
    print(f"Demo login: {username} (already set up; its password was left as it is)")
else:
    # Also adopts a password-less user that an earlier `manage.py search` created as the run owner.
    user = user or User(username=username)
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    print(f"Demo login: {username} / {password}  (change it before exposing nasweb on a network)")
'

say "demo search: digits, 2 KB SRAM, 4 KB flash, 20 candidates"
"$PY" manage.py search --dataset digits --sram-kb 2 --flash-kb 4 --budget 20 --seed 0 \
    --user "$NASWEB_DEMO_USER"

say "done"
echo "Start the web server with: $PY manage.py runserver  (then open http://127.0.0.1:8000/admin/)"
