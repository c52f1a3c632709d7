#!/bin/sh
# Search job entry point: a device-specific ProxylessNAS search against one or more profilers.
#   SEARCH_DEVICES      comma-separated profiler URLs (required), e.g. http://profiler-cpu:8000
#   SEARCH_TARGETS_MS   comma-separated latency targets in ms, one per device (required; each inside that device's
#                       [min, max] latency of the space, which `proxyless-search lut` prints)
#   SEARCH_SPACE        search space preset or file (default tiny-32)
#   SEARCH_BACKEND      backend measured on every device (default ort-cpu)
#   SEARCH_OUT          output directory (default /runs/search)
#   SEARCH_DATA, SEARCH_EPOCHS, SEARCH_WARMUP_EPOCHS, SEARCH_LOSS, SEARCH_SEED
#                       passed as --data, --epochs, --warmup-epochs, --loss, --seed when set; unset or empty, the
#                       search's own defaults apply (`proxyless-search search --help`)
#   PROXYLESS_TOKEN     bearer token of the profilers
# Extra arguments are passed to `proxyless-search search` as they are.
set -eu
: "${SEARCH_DEVICES:?set SEARCH_DEVICES to the profiler URL(s)}"
: "${SEARCH_TARGETS_MS:?set SEARCH_TARGETS_MS to the latency target(s) in ms}"

device_args=""
for url in $(echo "$SEARCH_DEVICES" | tr ',' ' '); do device_args="$device_args --device $url"; done
target_args=""
for ms in $(echo "$SEARCH_TARGETS_MS" | tr ',' ' '); do target_args="$target_args --target-ms $ms"; done
token_args=""
if [ -n "${PROXYLESS_TOKEN:-}" ]; then token_args="--token $PROXYLESS_TOKEN"; fi

# shellcheck disable=SC2086  # word splitting of the option lists is intended
exec proxyless-search search \
    --space "${SEARCH_SPACE:-tiny-32}" \
    --backend "${SEARCH_BACKEND:-ort-cpu}" \
    --out "${SEARCH_OUT:-/runs/search}" \
    ${SEARCH_DATA:+--data "$SEARCH_DATA"} \
    ${SEARCH_EPOCHS:+--epochs "$SEARCH_EPOCHS"} \
    ${SEARCH_WARMUP_EPOCHS:+--warmup-epochs "$SEARCH_WARMUP_EPOCHS"} \
    ${SEARCH_LOSS:+--loss "$SEARCH_LOSS"} \
    ${SEARCH_SEED:+--seed "$SEARCH_SEED"} \
    $device_args $target_args $token_args "$@"
