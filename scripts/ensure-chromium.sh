#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes sure a headless-capable Chromium is
# there for the web console's browser tests (Debian's `chromium`
# package), installing it when running as root with apt-get. Exits 1 with
# the install command otherwise. RAP_CHROMIUM names another binary.

have_chromium() {
  if [ -n "${RAP_CHROMIUM:-}" ] && [ -x "$RAP_CHROMIUM" ]; then return 0; fi
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1
}

if ! have_chromium; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    printf '==> %s\n' "Chromium missing (browser tests of the web console): installing the chromium package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "Chromium is missing (the web console's browser tests drive it headless)." >&2
    echo "Install it:  sudo apt-get update && sudo apt-get install -y chromium" >&2
    echo "or point RAP_CHROMIUM at a Chromium or Chrome binary." >&2
    exit 1
  fi
fi
