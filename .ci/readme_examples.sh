#!/usr/bin/env bash
# The README's examples, in the order the README gives them, in one shell, in a fresh folder:
# every `sparsify ...` / `torchrun ...` line of its ```bash blocks that runs on the shipped
# samples. Lines that need files a reader brings (net.pt, mymodels, an HF folder), a download
# (torchvision/timm weights), a GPU (TensorRT), or are placeholders (`convert ... --resume`) are
# listed as skipped. A gate example (`--min-speedup`) may exit 4: that is what it demonstrates.
#
# Run from anywhere, with the project installed (pip install -e '.[dev]'):
#     .ci/readme_examples.sh            # about 3-5 minutes on 2 quiet cores
# Not part of the default test suite (it trains several models); prints each command's time.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d -t sparsify-readme-XXXXXX)"
trap 'rm -rf "$work"' EXIT
ln -s "$repo/samples" "$work/samples"   # the README runs in the repo root: samples/... exist
cd "$work"

mapfile -t commands < <(python3 - "$repo/README.md" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith(("sparsify ", "torchrun ")):
            print(re.sub(r"\s+", " ", line))
EOF
)

skip='net\.pt|weights\.pt|model\.pt|mymodels|path/to/|torchvision|timm:| \.\.\. |tensorrt'
start=$(date +%s)
ran=0
for cmd in "${commands[@]}"; do
    if [[ "$cmd" =~ $skip ]]; then
        echo "skip: $cmd"
        continue
    fi
    t0=$(date +%s)
    set +e
    eval "$cmd" > "$work/last.log" 2>&1
    rc=$?
    set -e
    took=$(( $(date +%s) - t0 ))
    if [[ $rc -eq 0 || ( $rc -eq 4 && "$cmd" == *--min-speedup* ) ]]; then
        echo "ok ($rc, ${took}s): $cmd"
        ran=$((ran + 1))
    else
        echo "FAILED ($rc, ${took}s): $cmd"
        tail -20 "$work/last.log"
        exit 1
    fi
done
echo "README examples: $ran ran in order without error in $(( $(date +%s) - start )) s"
