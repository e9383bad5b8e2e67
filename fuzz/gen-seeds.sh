#!/usr/bin/env bash
# Regenerates the committed fuzz seeds (fuzz/seeds/<target>/) from real Go
# executables: small programs built here with every Go toolchain the project
# has (amd64 and arm64, -ldflags='-s -w', -buildmode=pie), the test fixtures
# (`cargo xtask` builds them into .cache/fixtures) and /usr/bin/prometheus
# (Debian package, Go 1.19) when present. Missing toolchains or
# binaries are skipped with a note. See README.md.
#
# Usage: fuzz/gen-seeds.sh            (replaces fuzz/seeds/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=$here/target/seed-bins
rm -rf "$work" && mkdir -p "$work"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
export GOCACHE=${GOCACHE:-$root/.cache/gocache}
go119=/usr/bin/go
go121=$root/.cache/go/1.21.13/go/bin/go
go127=$root/.cache/go/1.27.3/go/bin/go

build() { # NAME GO GOARCH ARGS...
    local name=$1 go=$2 arch=$3
    shift 3
    if [[ ! -x $go ]]; then
        echo "skip $name: no $go" >&2
        return
    fi
    GOARCH=$arch "$go" build "$@" -o "$work/$name" "$here/seedgen/tiny.go"
}
build go119-amd64-sw   "$go119" amd64 -ldflags='-s -w'
build go119-arm64      "$go119" arm64
build go121-amd64-pie  "$go121" amd64 -buildmode=pie
build go121-arm64-sw   "$go121" arm64 -ldflags='-s -w'
build go127-amd64      "$go127" amd64
build go127-amd64-sw   "$go127" amd64 -ldflags='-s -w'
build go127-arm64-sw   "$go127" arm64 -ldflags='-s -w'
build go127-arm64-pie  "$go127" arm64 -buildmode=pie
GOEXPERIMENT=nosizespecializedmalloc build go127-amd64-nospec-sw "$go127" amd64 -ldflags='-s -w'

inputs=("$work"/*)
# A fixed choice of the fixtures, so that new fixtures do not churn the seeds:
# one per Go version, the size-specialized allocator experiment of 1.26 and
# external (cgo) linking.
fixtures="go1.19.8 go1.21.13-cgo go1.22.10 go1.23.9 go1.24.11 go1.25.5 go1.26.6
    go1.26.6-sizespecializedmalloc go1.27.3 go1.27.3-cgo go1.27.3-nosizespecializedmalloc-pie"
for v in $fixtures; do
    f=$root/.cache/fixtures/$v/fixture
    if [[ ! -f $f ]]; then
        echo "skip fixture $v: no $f (cargo xtask builds the fixtures)" >&2
        continue
    fi
    ln -sf "$f" "$work/fixture-$v" && inputs+=("$work/fixture-$v")
done
if [[ -f /usr/bin/prometheus ]]; then
    ln -sf /usr/bin/prometheus "$work/prometheus-go119" && inputs+=("$work/prometheus-go119")
else
    echo "skip prometheus: /usr/bin/prometheus not installed (apt-get install prometheus)" >&2
fi

rm -rf "$here/seeds.new"
(cd "$here" && cargo +nightly run --quiet --release --example gen_seeds -- "$here/seeds.new" "${inputs[@]}")
rm -rf "$here/seeds" && mv "$here/seeds.new" "$here/seeds"
du -sh "$here/seeds"
