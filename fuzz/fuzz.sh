#!/usr/bin/env bash
# Runs goalloc's fuzz targets with cargo-fuzz (nightly). See README.md.
#
#   fuzz/fuzz.sh build                 build every target (release + debug
#                                      assertions and overflow checks, ASan)
#   fuzz/fuzz.sh smoke [SECONDS]       every committed seed once, then SECONDS
#                                      (default 20; 0: seeds only) of fuzzing per
#                                      target, with a throw-away corpus; fails on
#                                      any crash, timeout or leak
#   fuzz/fuzz.sh run TARGET [SECONDS] [LIBFUZZER_ARGS...]
#                                      fuzz one target (default 600 s) with the
#                                      working corpus fuzz/corpus/TARGET (kept,
#                                      git-ignored) seeded from fuzz/seeds/TARGET
#   fuzz/fuzz.sh targets               list the targets
#
# Environment: CARGO_FUZZ (default: the project's
# .cache/tools/bin/cargo-fuzz, else cargo-fuzz on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
targets=(go_binary build_info pclntab elf prologue symbolize)

if [[ -z ${CARGO_FUZZ:-} ]]; then
    if [[ -x $root/.cache/tools/bin/cargo-fuzz ]]; then
        CARGO_FUZZ=$root/.cache/tools/bin/cargo-fuzz
    else
        CARGO_FUZZ=$(command -v cargo-fuzz || true)
    fi
fi
if [[ -z $CARGO_FUZZ ]]; then
    echo "cargo-fuzz not found: cargo install cargo-fuzz --locked --root $root/.cache/tools" >&2
    exit 1
fi
# cargo-fuzz runs `cargo` from PATH: make it the nightly one, also when PATH
# starts with another toolchain's bin/ (as under `cargo xtask`).
if ! nightly_cargo=$(rustup which --toolchain nightly cargo 2>/dev/null); then
    echo "Rust nightly is not installed (cargo-fuzz needs it): rustup toolchain install nightly" >&2
    exit 1
fi
nightly_bin=$(dirname "$nightly_cargo")
fuzz() {
    env -u CARGO -u RUSTC -u RUSTDOC -u CARGO_TARGET_DIR RUSTUP_TOOLCHAIN=nightly \
        PATH="$nightly_bin:$PATH" "$CARGO_FUZZ" fuzz "$@"
}

# Per-target libFuzzer options.
opts() {
    local max_len
    case $1 in
        go_binary) max_len=4194304 ;;
        elf) max_len=1048576 ;;
        pclntab) max_len=262144 ;;
        build_info) max_len=16384 ;;
        prologue) max_len=8192 ;;
        symbolize) max_len=65536 ;;
        *) echo "unknown target $1 (targets: ${targets[*]})" >&2; exit 2 ;;
    esac
    echo "-max_len=$max_len -timeout=10 -rss_limit_mb=2048 -print_final_stats=1"
}

cd "$here"
case ${1:-} in
build)
    fuzz build -O -a
    ;;
smoke)
    secs=${2:-20}
    fuzz build -O -a
    log=$(mktemp)
    for t in "${targets[@]}"; do
        corpus=$(mktemp -d)
        if [[ $secs == 0 ]]; then
            limit=-runs=0 # the seeds only
        else
            limit=-max_total_time=$secs
        fi
        echo "=== fuzz smoke: $t ($limit)"
        # shellcheck disable=SC2046
        if ! fuzz run -O -a "$t" "$corpus" "seeds/$t" -- \
            $(opts "$t") "$limit" >"$log" 2>&1; then
            tail -n 60 "$log"
            echo "fuzz smoke: $t FAILED (the input is saved under fuzz/artifacts/$t/)" >&2
            rm -rf "$corpus" "$log"
            exit 1
        fi
        grep -E '^(Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added))' "$log" || true
        rm -rf "$corpus"
    done
    rm -f "$log"
    echo "fuzz smoke: ${#targets[@]} targets passed"
    ;;
run)
    t=${2:?usage: fuzz.sh run TARGET [SECONDS] [LIBFUZZER_ARGS...]}
    secs=${3:-600}
    shift $(( $# < 3 ? $# : 3 ))
    mkdir -p "corpus/$t"
    # shellcheck disable=SC2046
    fuzz run -O -a "$t" "corpus/$t" "seeds/$t" -- \
        $(opts "$t") -max_total_time="$secs" "$@"
    ;;
targets)
    printf '%s\n' "${targets[@]}"
    ;;
*)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
