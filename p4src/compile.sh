#!/usr/bin/env bash
# Compile the MFS P4 programs (called by `make p4`).
#   v1model -> $OUT/mfs.json + $OUT/mfs.p4info.txtpb   (p4c, bmv2 backend)
#   TNA     -> $OUT/tna/mfs.p4info.txtpb + $OUT/tna/bfrt.json (bf-p4c), when bf-p4c exists
# Tools are found like mfs/tools.py does: $P4C, else p4c on PATH (e.g. PATH=/opt/p4/bin:$PATH
# for a local build). OUT defaults to p4src/build. Sources are given relative to the
# repository so the committed JSON carries no machine-specific paths.
# Exits 2, saying what is missing, when no compiler is found.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"; fi
cd "$HERE/.."
OUT="${OUT:-p4src/build}"   # relative by default: no machine-specific path in the committed JSON
mkdir -p "$OUT"

find_p4c() {
    if [ -n "${P4C:-}" ]; then
        [ -x "$P4C" ] && { echo "$P4C"; return 0; }
        echo "compile.sh: \$P4C=$P4C is not executable" >&2; return 1
    fi
    command -v p4c 2>/dev/null && return 0
    return 1
}

if ! P4C_BIN="$(find_p4c)"; then
    echo "compile.sh: p4c not found (set \$P4C or put p4c on PATH)." >&2
    echo "compile.sh: p4c is not packaged in any registry this project uses; build it from" >&2
    echo "compile.sh: p4lang/p4c sources (docs/bmv2.md). The committed P4Info stays the contract." >&2
    exit 2
fi

echo "compile.sh: v1model with $P4C_BIN -> $OUT"
"$P4C_BIN" --target bmv2 --arch v1model --std p4-16 \
    --p4runtime-files "$OUT/mfs.p4info.txtpb" \
    -o "$OUT" p4src/v1model/mfs.p4
# p4c names the JSON after the source file: $OUT/mfs.json
test -f "$OUT/mfs.json"
rm -f "$OUT/mfs.p4i"   # the driver's preprocessed source; not a build product we keep
echo "compile.sh: wrote $OUT/mfs.json and $OUT/mfs.p4info.txtpb"

TNA_DONE=0
BF_P4C_BIN="${BF_P4C:-$(command -v bf-p4c 2>/dev/null || true)}"
if [ -n "$BF_P4C_BIN" ]; then
    # Tofino: the P4Info (standard externs, for Stratum/P4Runtime) and the BF-RT schema are
    # committed in $OUT/tna; the rest of bf-p4c's output (context.json, tofino.bin, logs)
    # stays in $TNA_BUILD (default: a temporary directory) -- docs/tofino.md.
    TNA_BUILD="${TNA_BUILD:-$(mktemp -d)}"
    mkdir -p "$OUT/tna" "$TNA_BUILD"
    echo "compile.sh: TNA with $BF_P4C_BIN -> $OUT/tna (build in $TNA_BUILD)"
    # --verbose 1: bf-p4c also writes pipe/logs (resources.json, phv.json), read by mfs.tofino_resources
    "$BF_P4C_BIN" --target tofino --arch tna --std p4-16 --verbose 1 -o "$TNA_BUILD" \
        --p4runtime-files "$TNA_BUILD/mfs.p4info.txtpb" --p4runtime-format text \
        --p4runtime-force-std-externs --bf-rt-schema "$TNA_BUILD/bfrt.json" \
        p4src/tna/mfs.p4
    cp "$TNA_BUILD/mfs.p4info.txtpb" "$TNA_BUILD/bfrt.json" "$OUT/tna/"
    echo "compile.sh: wrote $OUT/tna/mfs.p4info.txtpb and $OUT/tna/bfrt.json"
    python3 -m mfs.tofino_resources "$TNA_BUILD" || echo "compile.sh: no resource report (above)"
    TNA_DONE=1
fi
if [ "$TNA_DONE" = 0 ]; then
    echo "compile.sh: TNA not compiled: bf-p4c not found (set \$BF_P4C or put bf-p4c on PATH; docs/tofino.md)"
fi
