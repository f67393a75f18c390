# collect.sh: the toolchain image's root filesystem, from the machine that builds it.
#
# It holds this machine's C toolchain and shell, each file at its own path so the
# compiler finds its parts where it was configured to look:
#   - `sh`, `cc`, `as`, `ld` and `ar` as /usr/bin/<name>, and the compiler's own
#     programs (cc1, collect2, lto-wrapper, the LTO plugin);
#   - the shared libraries all of these load (`ldd`);
#   - the headers a probe including the C and POSIX headers reads (`cc -M probe.c`, with
#     and without optimization and feature macros) and their directories, and
#     the files linking it reads, static and dynamic (`-Wl,--trace`): crt files, libc,
#     libgcc;
#   - busybox (static) for every other command (`mkdir`, `cp`, `sed`, `cmp`, …).
# The recipe declares sh, busybox, cc, as, ld, ar and ldd as tools, so their digests
# (which carry the versions of dash, busybox, gcc, binutils and glibc) key this node.
set -eu
out=rootfs
b() { busybox "$@"; }

# up DIR: `../` once per component of the absolute DIR.
up() { case "$1" in /) ;; *) echo "$1" | b sed 's|/[^/]*|../|g' ;; esac; }

# place PATH [AS]: copies the file PATH resolves to, to its own path under $out; when
# PATH (or AS, the path it is known by in the image) is another name, a relative link.
place() {
  real=$(b readlink -f "$1")
  [ -f "$real" ] || { echo "collect.sh: \`$1\` is not a file" >&2; exit 1; }
  if [ ! -e "$out$real" ]; then
    b mkdir -p "$out$(b dirname "$real")"
    b cp "$real" "$out$real"
  fi
  if [ $# -gt 1 ]; then
    link=$2
  else
    link="$(b readlink -f "$(b dirname "$1")")/$(b basename "$1")"
  fi
  if [ "$link" != "$real" ] && [ ! -e "$out$link" ] && [ ! -L "$out$link" ]; then
    dir=$(b dirname "$link")
    b mkdir -p "$out$dir"
    b ln -s "$(up "$dir")${real#/}" "$out$link"
  fi
}

# libs FILE: the shared libraries FILE loads, as absolute paths.
libs() {
  ldd "$1" | b sed -n 's|.*=> \(/[^ ]*\) .*|\1|p; s|^[[:space:]]*\(/[^ ]*\) .*|\1|p'
}

b mkdir -p "$out"
# A merged /usr (Debian 12: /bin -> usr/bin, …) is kept as it is.
for d in bin lib lib64 sbin; do
  if [ -L "/$d" ]; then b ln -s "$(b readlink "/$d" | b sed 's|^/||')" "$out/$d"; fi
done

programs=""
for t in sh cc as ld ar; do
  p=$(command -v "$t")
  place "$p" "/usr/bin/$t"
  programs="$programs $p"
done
for p in cc1 collect2 lto-wrapper; do
  f=$(cc -print-prog-name="$p")
  place "$f"
  programs="$programs $f"
done
f=$(cc -print-file-name=liblto_plugin.so)
place "$f"
programs="$programs $f"
for p in $programs; do
  for l in $(libs "$p"); do place "$l"; done
done

# Headers: those the probe reads, and the other files of their directories, because
# optimization and feature macros pick other files there (`-O2` includes bits/stdio.h,
# `_POSIX_C_SOURCE` bits/socket-constants.h); but of /usr/include itself, which gathers
# every -dev package the machine has, only those read.
headers=$(for flags in "" "-O2" "-O2 -D_POSIX_C_SOURCE=200809L" "-O2 -D_GNU_SOURCE"; do
  # shellcheck disable=SC2086
  cc $flags -M -MT probe probe.c | b tr -d '\\' | b tr ' ' '\n' | b grep '^/'
done | b sort -u)
for h in $headers; do place "$h"; done
for d in $(for h in $headers; do b readlink -f "$(b dirname "$h")"; done | b sort -u); do
  [ "$d" = /usr/include ] && continue
  for f in "$d"/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && [ ! -e "$out$f" ]; then b cp "$f" "$out$f"; fi
  done
done
cc -c probe.c -o probe.o
for f in $( { cc -static -Wl,--trace -o probe probe.o; cc -Wl,--trace -o probe probe.o; } \
    | b grep '^/' | b sort -u); do
  place "$f"
done

place "$(command -v busybox)" /usr/bin/busybox
for a in $(busybox --list); do
  [ -e "$out/usr/bin/$a" ] || [ -L "$out/usr/bin/$a" ] || b ln -s busybox "$out/usr/bin/$a"
done
