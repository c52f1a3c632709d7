#!/bin/sh
# Search job entry point: a device-specific ProxylessNAS search against one or more profilers.
#   SEARCH_DEVICES      comma-separated profiler URLs (required), e.g. http://profiler-cpu:8000
#   SEARCH_TARGETS_MS   comma-separated latency targets in ms, one per device (required)
#   SEARCH_SPACE        search space preset or file (default tiny-32)
#   SEARCH_BACKEND      backend measured on every device (default ort-cpu)
#   SEARCH_DATA         digits | synthetic | path to an image folder or .npz (default digits)
#   SEARCH_EPOCHS, SEARCH_WARMUP_EPOCHS, SEARCH_LOSS, SEARCH_SEED, SEARCH_OUT (default /runs/search)
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
    --data "${SEARCH_DATA:-digits}" \
    --epochs "${SEARCH_EPOCHS:-10}" \
    --warmup-epochs "${SEARCH_WARMUP_EPOCHS:-2}" \
    --loss "${SEARCH_LOSS:-mul#log}" \
    --seed "${SEARCH_SEED:-0}" \
    --out "${SEARCH_OUT:-/runs/search}" \
    $device_args $target_args $token_args "$@"
