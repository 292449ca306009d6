#!/usr/bin/env bash
# QEMU's user-mode emulators for the test suite's device lanes, installed from Debian's packages when this runs as
# root with apt; otherwise one line says what to install, and those tests skip with that reason. Never fails.
#   AVX2 lane  (`pytest -m avx2`, `--device x86-avx2`): qemu-x86_64 (qemu-user-static; 7.2 and 10 are both exact).
#   ARM64 lane (`--device arm64-a53|arm64-a76`): QEMU >= 8 (bookworm-backports' qemu-user: 7.2 crashes importing
#   onnxruntime >= 1.28 for aarch64), debootstrap, and the sysroot `edgekit devices setup arm64` builds.
#   SSH lane   (`pytest -m ssh`, `--device ssh://...`): openssh-server + openssh-client, and the "x86 box": a venv
#   with only numpy + onnxruntime under ~/.cache/edgekit/ssh-box (EDGEKIT_SSH_BOX), never the project's .venv.
#   OpenVINO bundle lane: a venv with only numpy, pillow, onnxruntime and openvino under
#   ~/.cache/edgekit/openvino-box (EDGEKIT_OPENVINO_BOX), where a bundle's own check.py runs in both runtimes.
set -u
EDGEKIT=${EDGEKIT:-.venv/bin/edgekit}
say() { echo "emulators: $*"; }
is_root_apt() { [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; }
apt_install() {  # packages...; an empty package list is refreshed once
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; }
}
qemu_major() { "$1" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1; }

case "$(uname -m)" in
  x86_64|amd64) ;;
  *) say "not an x86-64 host; the emulated lanes will skip"; exit 0 ;;
esac

# --- AVX2 lane -------------------------------------------------------------------------------
if ! command -v qemu-x86_64-static >/dev/null 2>&1 && ! command -v qemu-x86_64 >/dev/null 2>&1; then
  if is_root_apt; then
    say "installing qemu-user-static (Debian) for the AVX2 lane"
    apt_install qemu-user-static || say "apt-get could not install qemu-user-static; the AVX2 lane will skip"
  else
    say "install qemu-user-static (Debian/Ubuntu: apt-get install qemu-user-static) to run the AVX2 lane; it will skip"
  fi
fi

# --- SSH lane (`pytest -m ssh`, --device ssh://...): a real sshd on 127.0.0.1 and an "x86 box" Python ------------
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1; then
  if is_root_apt; then
    say "installing openssh-server and openssh-client (Debian) for the SSH lane"
    apt_install openssh-server openssh-client || say "apt-get could not install openssh-server; the SSH lane will skip"
  else
    say "install openssh-server and openssh-client to run the SSH lane; it will skip"
  fi
fi
box=${EDGEKIT_SSH_BOX:-$HOME/.cache/edgekit/ssh-box}  # the board's Python: a bare venv with numpy + onnxruntime only
if [ ! -x "$box/bin/python" ] || ! "$box/bin/python" -c 'import numpy, onnxruntime' >/dev/null 2>&1; then
  say "making the SSH lane's x86 box: a venv with numpy and onnxruntime==1.31.1 in $box"
  { python3 -m venv "$box" && "$box/bin/pip" install -q onnxruntime==1.31.1 numpy; } >/dev/null 2>&1 \
    || say "could not make $box; the SSH lane's x86-box tests will skip"
fi

# --- OpenVINO bundle lane: a board with numpy, onnxruntime, Pillow and openvino only (a bundle packaged with
# `--runtimes ort,openvino` is checked there by its own check.py), the openvino version of the project's .venv -------
ovbox=${EDGEKIT_OPENVINO_BOX:-$HOME/.cache/edgekit/openvino-box}
ov_version=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("openvino"))' 2>/dev/null || true)
if [ -n "$ov_version" ] && { [ ! -x "$ovbox/bin/python" ] || ! "$ovbox/bin/python" -c 'import numpy, onnxruntime, openvino, PIL' >/dev/null 2>&1; }; then
  say "making the OpenVINO bundle lane's box: a venv with numpy, pillow, onnxruntime==1.31.1 and openvino==$ov_version in $ovbox"
  { python3 -m venv "$ovbox" && "$ovbox/bin/pip" install -q onnxruntime==1.31.1 numpy pillow "openvino==$ov_version"; } >/dev/null 2>&1 \
    || say "could not make $ovbox; the OpenVINO bundle test will skip"
fi

# --- ARM64 lane (best effort) ------------------------------------------------------------------
if [ "${EDGEKIT_SKIP_ARM64_SETUP:-0}" = "1" ]; then exit 0; fi
if ! is_root_apt; then
  say "the ARM64 lane needs QEMU >= 8, debootstrap and 'edgekit devices setup arm64'; it will skip"
  exit 0
fi
aarch64=$(command -v qemu-aarch64 || true)
if [ -z "$aarch64" ] || [ "$(qemu_major "$aarch64")" -lt 8 ] 2>/dev/null; then
  . /etc/os-release 2>/dev/null || true
  if [ "${VERSION_CODENAME:-}" = "bookworm" ]; then
    mirror=$(grep -rhoE '^(URIs:|deb)[[:space:]]+[^[:space:]]*/debian/?' /etc/apt/sources.list.d /etc/apt/sources.list 2>/dev/null \
             | grep -v security | awk '{print $2}' | head -1)
    if [ -n "$mirror" ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list.d /etc/apt/sources.list; then
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" > /etc/apt/sources.list.d/edgekit-backports.sources
      apt-get update -q >/dev/null 2>&1 || true
    fi
    say "installing QEMU 10 (bookworm-backports qemu-user) for the ARM64 lane"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports qemu-user >/dev/null 2>&1 \
      || say "could not install qemu-user from bookworm-backports; the ARM64 lane will skip"
  else
    say "the ARM64 lane needs QEMU >= 8 (qemu-user); it will skip"
  fi
fi
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap || say "could not install debootstrap"
if [ -x "$EDGEKIT" ]; then
  ready=$("$EDGEKIT" devices --json 2>/dev/null | python3 -c 'import json,sys; d={x["name"]: x for x in json.load(sys.stdin)["devices"]}; print(int(d["arm64-a76"]["ready"]))' 2>/dev/null || echo 0)
  if [ "$ready" != "1" ]; then
    say "building the arm64 sysroot (edgekit devices setup arm64)"
    "$EDGEKIT" devices setup arm64 || say "the arm64 sysroot could not be built; the ARM64 lane will skip"
  fi
fi
exit 0
