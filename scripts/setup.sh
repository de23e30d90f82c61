#!/usr/bin/env bash
# One-command install of Inflow: a virtualenv, torch (CPU build without an NVIDIA GPU), the system packages
# the simulators need to render on CPU, then `pip install -e .[all]`.
#
#   bash scripts/setup.sh            # everything (extras: all)
#   INFLOW_EXTRAS=dev,maniskill bash scripts/setup.sh
#
# Idempotent: a second run with unchanged setup files only checks a stamp and returns in seconds.
# Uses the active virtualenv when one is active, otherwise creates .venv in the repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${INFLOW_EXTRAS:-all}"
TORCH_VERSION="2.13.0"
LIBERO_VERSION="0.1.1"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
warn() { printf '\033[1;33m[setup]\033[0m %s\n' "$*" >&2; }

# ---------------------------------------------------------------- python environment
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  VENV="$VIRTUAL_ENV"
else
  VENV="$ROOT/.venv"
  if [[ ! -x "$VENV/bin/python" ]]; then
    PY="${PYTHON:-python3}"
    "$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
  fi
fi
PYTHON="$VENV/bin/python"
PIP=("$PYTHON" -m pip)

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

stamp_file="$VENV/.inflow-setup-stamp"
stamp="$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) extras=$EXTRAS gpu=$(has_gpu && echo 1 || echo 0)"

# ---------------------------------------------------------------- system packages (rendering on CPU)
# SAPIEN (ManiSkill) needs a Vulkan device even for state observations; on CPU that is Mesa's lavapipe,
# and Mesa < 25 is too old. LIBERO (MuJoCo) renders with EGL or OSMesa.
mesa_ok() {
  local v
  v="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
  [[ -n "$v" ]] || return 1
  [[ "${v%%.*}" =~ ^[0-9]+$ ]] && (( ${v%%.*} >= 25 ))
}
render_libs_ok() {
  ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' \
    && ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' \
    && ldconfig -p 2>/dev/null | grep -q 'libOSMesa.so'
}
install_system_packages() {
  if ! command -v apt-get >/dev/null 2>&1; then
    warn "no apt-get: install Vulkan (Mesa >= 25 lavapipe), EGL and OSMesa with your package manager"
    return 0
  fi
  local codename backports=()
  codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
  local cmds=()
  if [[ "$codename" == "bookworm" ]]; then
    # Debian 12 ships Mesa 22; Mesa 25 comes from bookworm-backports.
    backports=(-t bookworm-backports)
    cmds+=("printf 'Types: deb\\nURIs: http://deb.debian.org/debian\\nSuites: bookworm-backports\\nComponents: main\\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' > /etc/apt/sources.list.d/bookworm-backports.sources")
  fi
  cmds+=("apt-get update -q")
  cmds+=("DEBIAN_FRONTEND=noninteractive apt-get install -y -q libvulkan1 vulkan-tools libegl1 libgl1 libosmesa6 ffmpeg")
  cmds+=("DEBIAN_FRONTEND=noninteractive apt-get install -y -q ${backports[*]} mesa-vulkan-drivers libegl-mesa0 libgl1-mesa-dri")
  if [[ "$(id -u)" == "0" ]]; then
    log "installing rendering packages (Vulkan lavapipe from Mesa >= 25, EGL, OSMesa)"
    if [[ "$codename" == "bookworm" ]] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      eval "${cmds[0]}"
    fi
    local c
    for c in "${cmds[@]}"; do
      [[ "$c" == printf* ]] && continue
      eval "$c" >/dev/null
    done
  else
    warn "the simulators need Vulkan (Mesa >= 25), EGL and OSMesa to render on CPU. Run as root:"
    local c
    for c in "${cmds[@]}"; do warn "  sudo sh -c \"$c\""; done
  fi
}
if ! has_gpu && { ! mesa_ok || ! render_libs_ok; }; then
  install_system_packages
fi

# ---------------------------------------------------------------- fast path
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] \
   && "$PYTHON" -c 'import torch, embodied, envs, policies, algorithms' >/dev/null 2>&1; then
  log "up to date ($VENV)"
  exit 0
fi

# ---------------------------------------------------------------- torch first
"${PIP[@]}" install -q --upgrade pip setuptools wheel
torch_now="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if has_gpu; then
  if [[ "$torch_now" != "$TORCH_VERSION" && "$torch_now" != "$TORCH_VERSION+cu"* ]]; then
    log "installing torch $TORCH_VERSION (CUDA build)"
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
  fi
elif [[ "$torch_now" != "$TORCH_VERSION+cpu" ]]; then
  log "installing torch $TORCH_VERSION (CPU build)"
  # The CPU build lives on PyTorch's own index; a local wheel cache (pip find-links) may have it too.
  cpu_index=()
  if curl -s -m 5 -o /dev/null https://download.pytorch.org/whl/cpu/ 2>/dev/null; then
    cpu_index=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  "${PIP[@]}" install -q "torch==$TORCH_VERSION+cpu" "${cpu_index[@]}"
fi

# ---------------------------------------------------------------- LIBERO (its own requirements would pull a CUDA torch)
if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",libero,"* ]]; then
  "$PYTHON" -c "import importlib.metadata as m; assert m.version('libero') == '$LIBERO_VERSION'" >/dev/null 2>&1 \
    || { log "installing libero $LIBERO_VERSION (--no-deps)"; "${PIP[@]}" install -q --no-deps "libero==$LIBERO_VERSION"; }
fi

# ---------------------------------------------------------------- the project
log "pip install -e .[$EXTRAS]"
"${PIP[@]}" install -q -e ".[$EXTRAS]"
"$PYTHON" -c "import torch; v = torch.__version__; assert v.startswith('$TORCH_VERSION'), f'torch was replaced by {v}'"

echo "$stamp" > "$stamp_file"
log "done. Activate with: source $VENV/bin/activate"
