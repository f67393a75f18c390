#!/bin/sh
# Renders templates/*.yml.in into config/: Prometheus scrapes services at SERVICES_HOST on the
# port and metrics path that the services API description (the services input's
# api/routes.txt) names, every SCRAPE_INTERVAL. cascade runs it with only sh, mkdir and sed.
set -eu
api=inputs/services/api/routes.txt

for value in "${SCRAPE_INTERVAL:?declared in the recipe}" "${SERVICES_HOST:?declared in the recipe}"; do
    case $value in
    *[!0-9A-Za-z.:-]*)
        echo "render.sh: unexpected characters in '$value'" >&2
        exit 1
        ;;
    esac
done

port= metrics=
while read -r method path rest; do
    case $method in
    port) port=$path ;;
    GET) if [ "$path" = /metrics ]; then metrics=$path; fi ;;
    esac
done <"$api"
if [ -z "$port" ] || [ -z "$metrics" ]; then
    echo "render.sh: $api names no port or no /metrics route to scrape" >&2
    exit 1
fi

mkdir -p config
for config in prometheus alerts; do
    sed -e "s|@HOST@|$SERVICES_HOST|g" -e "s|@PORT@|$port|g" -e "s|@METRICS_PATH@|$metrics|g" \
        -e "s|@INTERVAL@|$SCRAPE_INTERVAL|g" "templates/$config.yml.in" >"config/$config.yml"
done
