#!/usr/bin/env bash
# Lists the longest Rust functions outside tests and fails when one is longer
# than the limit (issue 12: no function over 100 lines outside tests).
#
#   .ci/long-functions.sh            the ten longest, exit 1 if any is over 100 lines
#   .ci/long-functions.sh -n 30      the thirty longest
#   .ci/long-functions.sh -l 120     another limit
#
# A heuristic, not a parser (no build needed, only awk): a function starts at a
# line holding `fn name` and ends where the braces opened after it close again;
# its length is the lines from the `fn` line to the closing brace, both counted.
# Comments, string literals (also multi-line and raw ones) and char literals are
# blanked before braces are counted. Not counted as non-test code: files under
# tests/ and benches/ folders, and anything inside an item marked `#[cfg(test)]`
# (the usual `mod tests { ... }`) or `#[test]`. Nested functions are counted on
# their own and inside their parent.
set -euo pipefail
cd "$(dirname "$0")/.."
most=10
limit=100
while [ $# -gt 0 ]; do
    case $1 in
        -n) most=$2; shift 2 ;;
        -l) limit=$2; shift 2 ;;
        *) echo "usage: $0 [-n how-many] [-l limit]" >&2; exit 2 ;;
    esac
done

files=$({ git ls-files '*.rs' 2>/dev/null || find . -name '*.rs' -not -path './target/*'; } \
    | grep -Ev '(^|/)(tests|benches)/' || true)
[ -n "$files" ] || { echo "no Rust files found" >&2; exit 2; }

# One line per function: length, file:first-last, name.
# shellcheck disable=SC2086
table=$(awk '
    FNR == 1 { depth = 0; nf = 0; skip_at = -1; pending_test = 0; in_str = 0; in_raw = ""; in_block = 0 }
    {
        line = $0; out = ""; i = 1; n = length(line)
        # Blank comments, strings and char literals, keeping braces in code only.
        while (i <= n) {
            c = substr(line, i, 1)
            if (in_block) {
                if (substr(line, i, 2) == "*/") { in_block--; i += 2 } else if (substr(line, i, 2) == "/*") { in_block++; i += 2 } else i++
                continue
            }
            if (in_raw != "") {
                if (substr(line, i, length(in_raw)) == in_raw) { i += length(in_raw); in_raw = "" } else i++
                continue
            }
            if (in_str) {
                if (c == "\\") i += 2; else if (c == "\"") { in_str = 0; i++ } else i++
                continue
            }
            if (substr(line, i, 2) == "//") break
            if (substr(line, i, 2) == "/*") { in_block = 1; i += 2; continue }
            if (match(substr(line, i), /^b?r#*"/) && (i == 1 || substr(line, i - 1, 1) !~ /[A-Za-z0-9_]/)) {
                hashes = substr(line, i, RLENGTH); gsub(/[^#]/, "", hashes)
                in_raw = "\"" hashes; i += RLENGTH; out = out "\"\""; continue
            }
            if (c == "\"") { in_str = 1; i++; out = out "\"\""; continue }
            if (c == "\047" && match(substr(line, i), /^\047(\\.[^\047]*|[^\\\047])\047/)) { i += RLENGTH; out = out "x"; continue }
            out = out c; i++
        }
        code = out

        if (code ~ /^[ \t]*#\[(cfg\(test\)|test)\]/) pending_test = 1
        if (match(code, /(^|[^A-Za-z0-9_])fn [A-Za-z0-9_]+/)) {
            name = substr(code, RSTART, RLENGTH); sub(/^[^f]*fn /, "", name)
            nf++; fname[nf] = name; fstart[nf] = FNR; fdepth[nf] = depth; fopen[nf] = 0; ftest[nf] = (skip_at >= 0 || pending_test)
        }
        if (pending_test && skip_at < 0 && code ~ /\{/) { skip_at = depth; pending_test = 0 }
        else if (pending_test && code ~ /;[ \t]*$/ && code !~ /^[ \t]*#/) pending_test = 0

        for (j = 1; j <= length(code); j++) {
            ch = substr(code, j, 1)
            if (ch == "{") {
                depth++
                for (k = nf; k >= 1; k--) if (!fopen[k] && fstart[k] > 0) { fopen[k] = 1; break }
            } else if (ch == "}") {
                depth--
                if (nf > 0 && fopen[nf] && depth == fdepth[nf]) {
                    if (!ftest[nf]) printf "%d %s:%d-%d %s\n", FNR - fstart[nf] + 1, FILENAME, fstart[nf], FNR, fname[nf]
                    nf--
                }
                if (skip_at >= 0 && depth == skip_at) skip_at = -1
            } else if (ch == ";" && nf > 0 && !fopen[nf] && depth == fdepth[nf] && substr(code, j + 1) ~ /^[ \t]*$/) {
                nf--   # a declaration without a body (trait method, extern fn)
            }
        }
    }
' $files | sort -k1,1nr)

echo "$table" | head -n "$most" | awk '{ printf "%5d  %s  %s\n", $1, $3, $2 }'
over=$(echo "$table" | awk -v l="$limit" '$1 > l' | wc -l)
if [ "$over" -gt 0 ]; then
    echo "$over function(s) over $limit lines outside tests" >&2
    exit 1
fi
