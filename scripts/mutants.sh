#!/usr/bin/env bash
# Mutation testing, one area at a time, with the tests of the area's own
# crate (issue 30; see docs/testing.md). Not run in CI: an area takes from a
# few minutes to half an hour on a 2-core machine.
#
#   scripts/mutants.sh AREA [cargo-mutants options]
#   scripts/mutants.sh codec --list          # what would be tried
#   scripts/mutants.sh outbox --in-diff x.diff   # only mutants a change touches
#
# AREA: codec (net/src, corebus-net's tests), auth (authentication,
# permissions, tokens: broker/src/{auth/mod,auth_config,jwt,permissions}.rs with
# the corebus crate's unit tests and tests/auth.rs), outbox (outbox and
# replay ring: shards/src/{outbox,ring}.rs, corebus-shards' unit tests).
# Results go to target/mutants/AREA; the last line is caught / (caught +
# missed). Installs cargo-mutants when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

area=${1:-}
[ -n "$area" ] || { sed -n '2,16p' "$0" >&2; exit 2; }
shift
tests=()
case "$area" in
  codec) files=(-f 'net/src/*.rs') ; package=corebus-net ;;
  # The unit tests of those files and tests/auth.rs (the auth:: module of
  # the end_to_end binary) only: the other tests (CLI,
  # webhooks, cluster, browser) would add minutes to every mutant and test
  # nothing of this area.
  auth) files=(-f broker/src/auth/mod.rs -f broker/src/auth_config.rs -f broker/src/jwt.rs -f broker/src/permissions.rs) ; package=corebus ; tests=(--lib --test end_to_end -- auth:: auth_config:: jwt:: permissions::) ;;
  outbox) files=(-f shards/src/outbox.rs -f shards/src/ring.rs) ; package=corebus-shards ;;
  *) echo "scripts/mutants.sh: unknown area $area (codec, auth, outbox)" >&2; exit 2 ;;
esac

command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

out=target/mutants/$area
mkdir -p "$out"
status=0
cargo mutants "${files[@]}" --test-package "$package" --output "$out" "$@" -- "${tests[@]}" || status=$?
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the figure
# below says how many; other statuses are failures of the run itself.
case "$status" in 0 | 2 | 3) ;; *) exit "$status" ;; esac
results=$out/mutants.out
if [ -f "$results/caught.txt" ]; then
  caught=$(wc -l < "$results/caught.txt")
  missed=$(wc -l < "$results/missed.txt")
  echo "$area: caught $caught of $((caught + missed)) viable mutants ($(( caught * 100 / (caught + missed) ))%); missed ones in $results/missed.txt"
fi
