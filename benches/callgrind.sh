#!/usr/bin/env bash
# Instructions per request (callgrind) for the e2e bench's variants, through the axum router
# (`--profile`) and through HTTP (`--profile-http`, server and backend threads only), at one
# and at 64 requests in flight. Per request = (Ir(N2) - Ir(N1)) / (N2 - N1).
#
#   benches/callgrind.sh                      # bb8_state bb8_state_peek layer_lazy layer_eager
#   benches/callgrind.sh layer_eager bb8_state_peek
#
# Keeps the callgrind files in $OUT (default target/callgrind) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
variants=("${@:-bb8_state bb8_state_peek layer_lazy layer_eager}")
read -r -a variants <<<"${variants[*]}"
out=${OUT:-${CARGO_TARGET_DIR:-target}/callgrind}
mkdir -p "$out"
bin=$(cargo bench --bench e2e --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "could not build the e2e bench" >&2; exit 1; }
n1=2048 n2=10240

total() { sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$1"; }
# Sum of the threads of a --separate-threads run that ran the server or the backend.
server_total() {
  local sum=0 f
  for f in "$1"-*; do
    if grep -q -e 'proto::h1::role::Server' -e 'support::echo' "$f"; then
      sum=$((sum + $(total "$f")))
    fi
  done
  echo "$sum"
}

printf '%-16s %4s %14s %14s\n' variant c router http_server
for v in "${variants[@]}"; do
  for c in 1 64; do
    for n in $n1 $n2; do
      PROFILE_CONCURRENCY=$c valgrind --tool=callgrind --callgrind-out-file="$out/$v.c$c.$n" \
        "$bin" --profile "$v" "$n" >/dev/null 2>&1
      rm -f "$out/$v.http.c$c.$n"-*
      PROFILE_CONCURRENCY=$c valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file="$out/$v.http.c$c.$n" "$bin" --profile-http "$v" "$n" >/dev/null 2>&1
    done
    router=$((($(total "$out/$v.c$c.$n2") - $(total "$out/$v.c$c.$n1")) / (n2 - n1)))
    http=$((($(server_total "$out/$v.http.c$c.$n2") - $(server_total "$out/$v.http.c$c.$n1")) / (n2 - n1)))
    printf '%-16s %4s %14s %14s\n' "$v" "$c" "$router" "$http"
  done
done
