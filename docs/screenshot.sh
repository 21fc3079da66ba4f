#!/usr/bin/env bash
# Render a reproduction report (report.html of `sddkit reproduce`) to a PNG with headless Chromium, to see it as a
# browser does. Debian/Ubuntu: apt-get install -y chromium.
#   docs/screenshot.sh reproduction/report.html docs/reproduction/report.png [HEIGHT]
# HEIGHT (default 3000) is the window's height in pixels: the screenshot is the window, so give the report's
# full length (the seven-study report is ~12000) or accept a cut-off bottom.
set -euo pipefail
report=${1:?usage: docs/screenshot.sh REPORT.html OUT.png [HEIGHT]}
out=${2:?usage: docs/screenshot.sh REPORT.html OUT.png [HEIGHT]}
height=${3:-3000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "error: no chromium found; apt-get install -y chromium" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --hide-scrollbars \
  --window-size=1400,"$height" --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" 2>/dev/null
echo "wrote $out"
