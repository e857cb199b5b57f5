#!/usr/bin/env bash
# Prints four code-structure figures for issue 16, so they can be compared
# before and after a refactor:
#   1. `duplicates` pairs over the whole tree (if the `duplicates` command is
#      on PATH; otherwise says so),
#   2. the longest functions (by a brace-matching scan of every .rs file),
#   3. the number of `pub fn` methods of `bbsync_store::Store` (every
#      `impl Store { .. }` block under store/src),
#   4. the .rs files over 500 lines.
# Usage: scripts/code-stats.sh [--top N]   (run from anywhere in the repo)
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
top=10
if [[ "${1:-}" == "--top" ]]; then top="${2:?--top takes a number}"; fi

if command -v duplicates >/dev/null 2>&1; then
  echo "== duplicates pairs"
  duplicates --seconds 120 | head -1
else
  echo "== duplicates pairs: the duplicates command is not on PATH"
fi

scan=$(cat <<'PY'
import re, sys

top = int(sys.argv[1])
files = [l.strip() for l in sys.stdin if l.strip()]
FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"[^"]*"\s+)?fn\s+(\w+)')

def strip(line):
    """The line without comments, string and char literals (approximate)."""
    line = re.sub(r'//.*', '', line)
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line

funcs, big, store_pub = [], [], 0
for path in files:
    try:
        lines = open(path, encoding='utf-8').read().split('\n')
    except (OSError, UnicodeDecodeError):
        continue
    n = len(lines) - (1 if lines and lines[-1] == '' else 0)
    if n > 500:
        big.append((n, path))
    clean = [strip(l) for l in lines]
    # functions: from the `fn` line to the brace that closes its body
    for i, l in enumerate(clean):
        m = FN.match(l)
        if not m:
            continue
        depth, opened, j = 0, False, i
        while j < len(clean):
            for ch in clean[j]:
                if ch == '{':
                    depth += 1
                    opened = True
                elif ch == '}':
                    depth -= 1
                elif ch == ';' and not opened and depth == 0:
                    break
            else:
                if opened and depth <= 0:
                    break
                j += 1
                continue
            break
        if opened:
            funcs.append((j - i + 1, f'{path}:{i + 1}', m.group(7)))
    # public methods of Store: `pub fn` at depth 1 of an `impl Store {` block
    if path.startswith('store/src/'):
        depth, in_impl = 0, False
        for l in clean:
            if depth == 0 and re.match(r'^impl\s+Store\s*\{', l):
                in_impl = True
            if in_impl and depth == 1 and re.match(r'^\s*pub\s+(async\s+)?fn\s', l):
                store_pub += 1
            depth += l.count('{') - l.count('}')
            if depth == 0:
                in_impl = False

funcs.sort(reverse=True)
print(f'== longest functions (top {top} of {len(funcs)})')
for n, where, name in funcs[:top]:
    print(f'{n:5} {name:32} {where}')
print(f'== public methods of Store: {store_pub}')
big.sort(reverse=True)
print(f'== .rs files over 500 lines: {len(big)}')
for n, path in big:
    print(f'{n:5} {path}')
PY
)
git ls-files '*.rs' | python3 -c "$scan" "$top"
