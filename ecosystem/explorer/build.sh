#!/bin/sh
# Builds the explorer's static site into public/ from the services API description (the
# services input's api/routes.txt): its routes become the endpoint table of
# src/index.html.in (@ROUTES@) and its default port the API address (@PORT@).
# cascade runs it with only sh, mkdir and cp on PATH, so everything else is a shell builtin.
set -eu
api=inputs/services/api/routes.txt

# html TEXT: prints TEXT with &, < and > escaped.
html() {
    s=$1 out=
    while [ -n "$s" ]; do
        rest=${s#?}
        c=${s%"$rest"}
        s=$rest
        case $c in
        '&') out="$out&amp;" ;;
        '<') out="$out&lt;" ;;
        '>') out="$out&gt;" ;;
        *) out="$out$c" ;;
        esac
    done
    printf '%s' "$out"
}

port= rows=
while read -r method path about; do
    case $method in
    '' | '#'*) ;;
    port) port=$path ;;
    GET)
        rows="$rows<tr><td>GET</td><td><code>$(html "$path")</code></td><td>$(html "$about")</td></tr>
"
        ;;
    *)
        echo "build.sh: unexpected line in $api: $method $path" >&2
        exit 1
        ;;
    esac
done <"$api"
if [ -z "$port" ] || [ -z "$rows" ]; then
    echo "build.sh: $api has no port or no routes" >&2
    exit 1
fi

mkdir -p public
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
    *@ROUTES@*) printf '%s' "$rows" ;;
    *)
        while case $line in *@PORT@*) true ;; *) false ;; esac; do
            line="${line%%@PORT@*}$port${line#*@PORT@}"
        done
        printf '%s\n' "$line"
        ;;
    esac
done <src/index.html.in >public/index.html
cp src/style.css public/style.css
