#!/usr/bin/env bash
# Run `python -m bot ARGS...` on a systemd install the way vllm-discord-bot.service runs the
# bot: same transient user (it shares the running service's UID, so files stay theirs), same
# settings, state directory and token credential. For backup, export and sync-commands:
#
#   sudo scripts/systemd-run-bot.sh backup /var/lib/vllm-discord-bot/backup-$(date +%F).sqlite3
#   sudo scripts/systemd-run-bot.sh export --format csv > feedback.csv
#   sudo scripts/systemd-run-bot.sh sync-commands --guild YOUR_SERVER_ID
#
# (`console` works too, but only while the service is stopped: one bot per database.)
# Files the command writes itself (backup, export --out) must go under
# /var/lib/vllm-discord-bot: the rest of the system is read-only to it. Standard output
# reaches your shell, so redirect it anywhere.
set -euo pipefail

prefix="${BOT_PREFIX:-/opt/vllm-discord-bot}"
etc=/etc/vllm-discord-bot
state=/var/lib/vllm-discord-bot

if [[ $# -eq 0 ]]; then
    echo "usage: $0 backup PATH | export [OPTIONS] | sync-commands [--guild ID] | ..." >&2
    exit 2
fi
# A terminal gets a pseudo-terminal; otherwise stdin/stdout are passed through (pipes, files).
io=--pipe
if [[ -t 0 && -t 1 ]]; then io=--pty; fi

# The token as the unit gets it: encrypted (systemd-creds) if that file exists, else plain.
credential=LoadCredential=discord_token:"$etc/discord_token"
if [[ -e "$etc/discord_token.cred" ]]; then
    credential=LoadCredentialEncrypted=discord_token:"$etc/discord_token.cred"
fi

exec systemd-run --quiet --wait --collect "$io" \
    --property=DynamicUser=yes \
    --property=User=vllm-discord-bot \
    --property=Group=vllm-discord-bot \
    --property=StateDirectory=vllm-discord-bot \
    --property=UMask=0077 \
    --property="$credential" \
    --property=EnvironmentFile=-"$etc/bot.env" \
    --setenv=BOT_CONFIG="$etc/bot.toml" \
    --setenv=DATABASE_PATH="$state/bot.sqlite3" \
    --setenv=PYTHONDONTWRITEBYTECODE=1 \
    --working-directory="$state" \
    -- "$prefix/.venv/bin/python" -P -m bot "$@"
