#!/usr/bin/env bash
# Pipeline recipes for lqae. The tests run this script; run it yourself from the repository root:
#   bash examples/recipes.sh OUTDIR
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out"

# 1. An image as words, and the words back as an image.
lqae encode examples/emoji-cat.png > "$out/cat.txt"
lqae decode "$out/cat.txt" -o "$out/cat.png"

# 2. A pipe, PNG to a file or to stdout.
lqae encode examples/photo-cat.png | lqae decode - -o "$out/photo-cat.png"
lqae encode examples/photo-cat.png | lqae decode - -o - > "$out/photo-cat-stdout.png"

# 3. Edit a word by hand and decode again.
sed '1s/^[a-z]*/sunset/' examples/emoji-rocket.txt | lqae decode - -o "$out/rocket-edited.png"

# 4. Many files from find, JSON Lines for programs, and back to pictures.
find examples -name '*.png' ! -name '*.rec.png' | sort | lqae encode --from-list - -o "$out/all.jsonl" --quiet
lqae decode "$out/all.jsonl" -o "$out/decoded" --quiet

# 5. Whole folders, mirrored; a second run skips what is done.
lqae encode examples -o "$out/tokens" --quiet
lqae encode examples -o "$out/tokens" --quiet
lqae decode "$out/tokens" -o "$out/pngs" --quiet

# 6. Just the ids, for programs that want integers.
lqae encode examples/fashion-boot.png --format ids | head -n 2

# 7. The words a JSON program sees.
lqae encode examples/drawn-sunset.png --format json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["grid"], " ".join(r["tokens"][0]))'
