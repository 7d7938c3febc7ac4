#!/usr/bin/env bash
# Set up everything lqf needs in ./.venv (idempotent; a second run takes seconds).
#   - torch + torchvision (pinned pair below; override with LQF_TORCH="torch==X torchvision==Y")
#   - lqf itself, editable, with all extras (data sets, model weights, test and lint tools)
#   - animal-mnist (its metadata asks for tensorflow, which it does not need: --no-deps)
#   - Fashion-MNIST from the Debian package dataset-fashion-mnist (needs root for apt)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if [ -z "${LQF_TORCH:-}" ]; then
  case "$(uname -m)" in
    x86_64) LQF_TORCH="torch==2.14.1 torchvision==0.29.1" ;;
    aarch64 | arm64) LQF_TORCH="torch==2.9.1 torchvision==0.24.1" ;;
    *) LQF_TORCH="torch torchvision" ;;
  esac
fi
# shellcheck disable=SC2086
"${PIP[@]}" $LQF_TORCH
torch_before=$(.venv/bin/python -c "import torch; print(torch.__version__)")

"${PIP[@]}" -e ".[all]"
"${PIP[@]}" --no-deps animal-mnist

torch_after=$(.venv/bin/python -c "import torch; print(torch.__version__)")
if [ "$torch_before" != "$torch_after" ]; then
  echo "setup: installing lqf replaced torch $torch_before by $torch_after" >&2
  exit 1
fi

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -z "${LQF_FASHION_MNIST_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq > /dev/null && apt-get install -y -qq dataset-fashion-mnist > /dev/null
  elif command -v sudo > /dev/null && command -v apt-get > /dev/null; then
    sudo apt-get update -qq > /dev/null && sudo apt-get install -y -qq dataset-fashion-mnist > /dev/null
  else
    echo "setup: Fashion-MNIST not installed (Debian package dataset-fashion-mnist);" \
      "lqf will download it through torchvision where there is a network" >&2
  fi
fi
echo "setup: ready (.venv, torch $torch_after)"
