"""Picks at most CAP inputs (each at most 4 KiB) that cover the most libFuzzer features,
greedily, from a merge control file, and copies them into OUTDIR named by their sha1.

    $BIN -merge=1 -merge_control_file=/tmp/ctl /tmp/merged /tmp/work-<target>
    python3 select.py /tmp/ctl corpus/<target> 200
"""
import hashlib
import os
import sys

ctl, outdir, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(ctl).read().split("\n")
n = int(lines[0])
files = lines[2 : 2 + n]
feats = {}
for line in lines[2 + n :]:
    if line.startswith("FT "):
        parts = line.split()
        feats[int(parts[1])] = set(parts[2:])
total = set().union(*feats.values())
size = {i: os.path.getsize(files[i]) for i in feats}
cands = {i: f for i, f in feats.items() if size[i] <= 4096}
covered, chosen = set(), []
while len(chosen) < cap:
    best, gain = None, 0
    for i, f in cands.items():
        g = len(f - covered)
        if g > gain or (g == gain and g > 0 and size[i] < size[best]):
            best, gain = i, g
    if best is None:
        break
    chosen.append(best)
    covered |= cands.pop(best)
os.makedirs(outdir, exist_ok=True)
for i in chosen:
    data = open(files[i], "rb").read()
    open(os.path.join(outdir, hashlib.sha1(data).hexdigest()), "wb").write(data)
print(
    f"{len(chosen)} inputs cover {len(covered)} of {len(total)} features "
    f"({100 * len(covered) / len(total):.1f}%), {sum(size[i] for i in chosen)} bytes"
)
