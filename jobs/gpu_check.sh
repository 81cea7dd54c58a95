#!/usr/bin/env bash
# The GPU check: `ray-sticker bench step` for the paper-size EIGML and M2SA (random weights,
# nothing downloaded) in the GPU's precision (bf16 where it computes it), with and without
# torch.compile, on a machine with one GPU and PyTorch but no network and no Ray. The figures
# (ms/step, it/s, samples/s, TFLOP/s, MFU, GPU memory) go to JSON files.
#
#   jobs/gpu_check.sh wheels [DIR]          # here, with the package registry: the wheelhouse
#                                            # (default .whl, about 20 MB) of what the GPU host lacks
#   jobs/gpu_check.sh run [OUT] [WHEELS]    # there: install WHEELS (if the folder exists) into a
#                                            # private folder, then write OUT/step-<config>.json
#
# The wheelhouse is made for CPython 3.12 on x86-64 Linux (GPU_CHECK_PYTHON to change it), at
# the versions installed beside this checkout, from the packages the GPU host's image lacks:
# DeepSpeed (built here into a wheel; its ops compile on first use there), open_clip and its
# ftfy, pydantic, transformers at this checkout's version, boto3. Ray is not needed: the step
# benchmark runs one rank in a process group of its own.
#
# Settings (environment): GPU_CHECK_CONFIGS (default "eigml m2sa"), GPU_CHECK_ARGS (default
# "--compile --steps 20 --repeats 3 --warmup 5"), GPU_CHECK_DEVICE (default cuda; cpu runs the
# same path on a machine without a GPU), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# name as pip knows it  =  distribution whose installed version is pinned
PACKAGES=(deepspeed open_clip_torch ftfy wcwidth pydantic pydantic_core annotated_types typing_inspection hjson
          transformers boto3 botocore s3transfer jmespath)

pins() {  # name==version of each package, as installed for $PY
    "$PY" - "${PACKAGES[@]}" <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    print(f"{name}=={metadata.version(name)}")
EOF
}

wheels() {
    local dir=${1:-.whl} target=${GPU_CHECK_PYTHON:-3.12}
    mkdir -p "$dir"
    local pinned binary=() deepspeed=""
    pinned=$(pins)
    for p in $pinned; do
        if [[ $p == deepspeed==* ]]; then deepspeed=$p; else binary+=("$p"); fi
    done
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$dir" "${binary[@]}"
    # DeepSpeed is published as a source archive: built here (pure Python; no op prebuilt).
    DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dir" "$deepspeed"
    du -sh "$dir"
}

run() {
    local out=${1:-gpu-check} wheels=${2:-.whl}
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    local path=$PWD
    if [[ -d $wheels ]] && compgen -G "$wheels/*.whl" > /dev/null; then
        local site=${TMPDIR:-/tmp}/ray-sticker-gpu-check-site
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl
        path="$path:$site"
    fi
    export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
    export RAY_STICKER_HOME=${RAY_STICKER_HOME:-$out/home}
    local config status=0
    # shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of arguments
    for config in ${GPU_CHECK_CONFIGS:-eigml m2sa}; do
        "$PY" -m ray_sticker.cli bench step --config "$config" --random-init \
            --device "${GPU_CHECK_DEVICE:-cuda}" ${GPU_CHECK_ARGS:---compile --steps 20 --repeats 3 --warmup 5} \
            --json "$out/step-$config.json" 2>&1 | tee "$out/step-$config.log" || status=1
    done
    if command -v nvidia-smi > /dev/null; then nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true; fi
    return $status
}

case ${1:-} in
    wheels) shift; wheels "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: jobs/gpu_check.sh wheels [DIR] | run [OUT] [WHEELS]" >&2; exit 2 ;;
esac
