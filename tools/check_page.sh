#!/usr/bin/env bash
# tools/check_page.sh: the page of `pixel serve` in headless Chromium, end to end.
#
#   tools/check_page.sh [RUN_DIR] [OUT_DIR]
#
# Serves RUN_DIR (default: a tiny model trained here for 3 steps, a few seconds) on a free port,
# opens `/?sample=0&task=trace` (the page loads ShapesLN sample 0 and asks the API for its trace
# caption), and checks that the page rendered: its title, the "done" status, the annotated
# answer image in the DOM, and a screenshot with content (OUT_DIR/page.png, default a temp
# folder). It fails, never skips, when Chromium is missing; set CHROMIUM to its path if it is
# not on PATH as chromium, chromium-browser or google-chrome. PIXEL overrides the binary
# (default target/release/pixel, built with `cargo build --release -p pixel-cli`).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
pixel=${PIXEL:-$repo/target/release/pixel}
chromium=${CHROMIUM:-}
if [[ -z $chromium ]]; then
    for c in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$c" >/dev/null; then chromium=$c; break; fi
    done
fi
if [[ -z $chromium ]]; then
    echo "check_page: FAIL: no Chromium (chromium, chromium-browser, google-chrome); install one" \
         "(apt-get install chromium, or npx playwright install chromium and set CHROMIUM)" >&2
    exit 1
fi
[[ -x $pixel ]] || { echo "check_page: FAIL: no $pixel; cargo build --release -p pixel-cli" >&2; exit 1; }

work=$(mktemp -d)
server=""
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
out=${2:-$work/out}
mkdir -p "$out"

run=${1:-}
if [[ -z $run ]]; then
    run=$work/run
    sed -e 's/^steps = 3200/steps = 3/' -e 's/^batch_size = 16/batch_size = 2/' \
        -e 's/^validation_images = 150/validation_images = 1/' \
        -e 's/^baseline_images = 400/baseline_images = 1/' \
        -e 's/^max_new_tokens = 40/max_new_tokens = 8/' \
        "$repo/configs/demo.toml" > "$work/tiny.toml"
    "$pixel" demo --config "$work/tiny.toml" --out "$run" > "$work/demo.log" 2>&1 \
        || { cat "$work/demo.log" >&2; echo "check_page: FAIL: training the tiny model" >&2; exit 1; }
fi

"$pixel" serve --checkpoint "$run" --port 0 > "$work/serve.log" 2>&1 &
server=$!
url=""
for _ in $(seq 100); do
    url=$(sed -n 's/^listening on //p' "$work/serve.log")
    [[ -n $url ]] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.2
done
[[ -n $url ]] || { cat "$work/serve.log" >&2; echo "check_page: FAIL: the server did not start" >&2; exit 1; }

page="$url/?sample=0&task=trace"
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,900
       --user-data-dir="$work/profile" --virtual-time-budget=30000)
# Virtual time pauses while the page's fetch is pending, but on a loaded machine Chromium can
# still dump the DOM before the answer is drawn; a few tries tell that from a page that fails.
for try in 1 2 3 4 5; do
    "$chromium" "${flags[@]}" --dump-dom "$page" > "$out/page.html" 2>> "$work/chromium.log"
    grep -q 'id="status" class="">done in' "$out/page.html" && break
    echo "check_page: try $try: the prediction had not finished; again" >&2
done
"$chromium" "${flags[@]}" --screenshot="$out/page.png" "$page" >> "$work/chromium.log" 2>&1

fail() { echo "check_page: FAIL: $*" >&2; tail -5 "$work/chromium.log" >&2; exit 1; }
grep -q '<title>PixelLLM: try your model</title>' "$out/page.html" || fail "no page title in the DOM"
grep -q 'id="status" class="">done in' "$out/page.html" || fail "the prediction did not finish: $(grep -o 'id="status"[^<]*' "$out/page.html")"
grep -q 'id="answer" alt="the annotated answer" src="data:image/png;base64,' "$out/page.html" \
    || fail "no annotated answer image in the DOM"
[[ -s $out/page.png ]] || fail "no screenshot"
# A blank page's pixels take a handful of byte values; this one shows two images and text.
python3 - "$out/page.png" <<'EOF' || fail "the screenshot is blank"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, size = 8, b"", None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        size = struct.unpack(">II", body[:8])
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
values = len(set(zlib.decompress(idat)))
print(f"screenshot {size[0]}x{size[1]}, {values} distinct byte values")
sys.exit(0 if values > 32 else 1)
EOF
echo "check_page: OK ($url, screenshot $out/page.png)"
