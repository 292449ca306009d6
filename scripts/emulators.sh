#!/usr/bin/env bash
# QEMU's user-mode emulator for the test suite's AVX2 lane (and `edgekit verify --device x86-avx2`):
# installed from Debian's packages when this runs as root with apt; otherwise one line says what to install,
# and the lane's tests skip with that reason. Never fails the build.
set -u
if command -v qemu-x86_64-static >/dev/null 2>&1 || command -v qemu-x86_64 >/dev/null 2>&1; then
  exit 0
fi
case "$(uname -m)" in
  x86_64|amd64) ;;
  *) echo "emulators: not an x86-64 host; the AVX2 lane will skip"; exit 0 ;;
esac
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "emulators: installing qemu-user-static (Debian) for the AVX2 lane"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -q qemu-user-static >/dev/null 2>&1 \
     || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q qemu-user-static >/dev/null 2>&1; }; then
    exit 0
  fi
  echo "emulators: apt-get could not install qemu-user-static; the AVX2 lane will skip"
  exit 0
fi
echo "emulators: install qemu-user-static (Debian/Ubuntu: apt-get install qemu-user-static) to run the AVX2 lane; it will skip"
exit 0
