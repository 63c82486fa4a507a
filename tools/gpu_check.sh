#!/usr/bin/env bash
# tools/gpu_check.sh: build the workspace's `cuda` feature test binaries on a machine WITHOUT a
# GPU, then run them on a machine WITH one (no Rust toolchain needed there).
#
#   tools/gpu_check.sh setup   # here: nvcc 13.0 + headers from PyPI wheels, a libcuda link stub,
#                              # a fake nvidia-smi (dfdx's build.rs asks it for the compute cap)
#   tools/gpu_check.sh build   # here: cargo test --no-run with pixel-cli/cuda into target-cuda/,
#                              # one CPU training step of pixelllm-base from scratch as the
#                              # reference (target-cuda/cpu-step.json, seed 0), then pack the
#                              # test binaries, `pixel` and it into target-cuda/gpu-pack.tar.xz
#   tools/gpu_check.sh run [OUT]   # there, from the repo root: unpack, run every test binary,
#                                  # then the same pixelllm-base step on the GPU, its loss
#                                  # compared with the CPU's to 1e-4 (relative); log to
#                                  # OUT/log.txt and OUT/summary.txt (OUT defaults to $OUT)
#
# `run` needs the binaries built exactly as `build` builds them: the paths below are baked into
# them by env!() (CARGO_MANIFEST_DIR, CARGO_BIN_EXE_pixel, dfdx's OUT_DIR and CUDA_INCLUDE_DIR),
# so the checkout must have been at $BUILD_ROOT (/work/main) when building; `run` symlinks
# $BUILD_ROOT (and $SRC_ROOT, if the sources built were a copy elsewhere: pass the same
# SRC_ROOT to `build` and `run`) to the checkout it runs from when they differ.
# dfdx compiles some kernels at run time with NVRTC against $BUILD_ROOT/cuda-root/include
# (CUDA 13.0 headers, copied there by `setup`).
# Its .cu kernels are compiled to PTX at build time for sm_$CUDA_COMPUTE_CAP (default 90, H200)
# with nvcc 13.0, so the driver there must support CUDA >= 13.0 (driver >= 580).
# The binaries link libcuda.so.1, libnvrtc.so.13, libcublas.so.13 and libcublasLt.so.13: `run`
# takes them from the driver and from the python3 `nvidia` wheels (torch cu130) on that machine.
#
# With the `run` tool of this workplace (ignored paths travel only when carried):
#   carry: target-cuda/gpu-pack.tar.xz, cuda-root/include (and target-cuda/gpu-src.tar.xz, which
#          `build` writes when SRC_ROOT is a copy)
#   command: bash tools/gpu_check.sh run "$OUT"   (with the same BUILD_ROOT/SRC_ROOT as `build`)
set -uo pipefail

BUILD_ROOT=${BUILD_ROOT:-/work/main}      # checkout holding target-cuda/ and cuda-root/
SRC_ROOT=${SRC_ROOT:-$BUILD_ROOT}          # sources cargo builds (a patched copy, say)
CAP=${CUDA_COMPUTE_CAP:-90}
DEPS=${CUDA_DEPS:-/work/cuda-deps}          # pip --target prefix for the nvcc wheels (here)
TARGET=$BUILD_ROOT/target-cuda
PACK=$TARGET/gpu-pack.tar.xz
CUDA_V=13.0

die() { echo "gpu_check: $*" >&2; exit 1; }

cmd_setup() {
    cd "$BUILD_ROOT" || die "no $BUILD_ROOT"
    local nv=$DEPS/nvidia/cu13 tmp
    if [ ! -x "$nv/bin/nvcc" ] || [ ! -d "$nv/nvvm" ] || [ ! -e "$nv/include/nv/target" ]; then
        # pip --target will not merge into an existing nvidia/ folder: install each wheel apart.
        for w in nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
                 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85; do
            tmp=$(mktemp -d)
            python3 -m pip install -q --no-deps --target "$tmp" "$w" || die "pip $w"
            mkdir -p "$nv" && cp -a "$tmp/nvidia/cu13/." "$nv/" && rm -rf "$tmp"
        done
    fi
    # Link-time libraries: the CUDA 13 runtime wheels of any python here (torch cu130 brings them).
    local sp
    sp=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)/cu13/lib
    if [ ! -e "$sp/libcublasLt.so.13" ]; then
        python3 -m pip install -q --no-deps --target "$DEPS/libs" nvidia-cublas==13.0.0.19 \
            nvidia-cuda-nvrtc==13.0.88 || die "pip cublas/nvrtc"
        sp=$DEPS/libs/nvidia/cu13/lib
    fi
    mkdir -p cuda-root/lib cuda-root/bin cuda-root/include
    # NVRTC include dir baked into dfdx (cccl left out; cuda_fp16.h only needs nv/).
    (cd "$nv/include" && tar cf - --exclude=./cccl .) | tar xf - -C cuda-root/include
    ln -sf "$sp/libnvrtc.so.13" cuda-root/lib/libnvrtc.so
    ln -sf "$sp/libcublas.so.13" cuda-root/lib/libcublas.so
    ln -sf "$sp/libcublasLt.so.13" cuda-root/lib/libcublasLt.so
    # libcuda.so.1 stub: every driver function cudarc 0.9 binds; the real one comes from the driver.
    local sys
    sys=$(ls -d ~/.cargo/registry/src/*/cudarc-0.9.*/src/driver/sys.rs | tail -1)
    grep -oE 'pub fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $3}' | sort -u |
        awk '{print "int "$1"(void){return 999;}"}' > cuda-root/lib/cuda_stub.c
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o cuda-root/lib/libcuda.so cuda-root/lib/cuda_stub.c ||
        die "stub"
    rm cuda-root/lib/cuda_stub.c
    printf '#!/bin/sh\n# fake nvidia-smi for dfdx build.rs (no GPU here)\necho compute_cap\necho %s\n' \
        "${CAP:0:-1}.${CAP: -1}" > cuda-root/bin/nvidia-smi
    chmod +x cuda-root/bin/nvidia-smi
    grep -qx '/cuda-root/' .git/info/exclude 2>/dev/null || echo /cuda-root/ >> .git/info/exclude
    grep -qx '/target-cuda/' .git/info/exclude 2>/dev/null || echo /target-cuda/ >> .git/info/exclude
    echo "setup done"
}

cmd_build() {
    cd "$BUILD_ROOT" || die "no $BUILD_ROOT"
    [ -x cuda-root/bin/nvidia-smi ] || die "run setup first"
    unset CUDA_PATH CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB
    export CARGO_TARGET_DIR=$TARGET CUDA_ROOT=$BUILD_ROOT/cuda-root CUDA_COMPUTE_CAP=$CAP
    export PATH=$BUILD_ROOT/cuda-root/bin:$DEPS/nvidia/cu13/bin:$PATH
    local json=$TARGET/gpu-build.json
    mkdir -p "$TARGET"
    cd "$SRC_ROOT" || die "no $SRC_ROOT"
    cargo test --workspace --release --no-run --features pixel-cli/cuda ${JOBS:+-j $JOBS} \
        --message-format=json-render-diagnostics > "$json" || die "cargo build failed"
    # manifest: <crate dir relative to BUILD_ROOT> <binary relative to target-cuda> <target name>
    python3 - "$json" "$SRC_ROOT" "$TARGET" > "$TARGET/gpu-manifest.txt" <<'EOF' || die manifest
import json, os, sys
root, target = sys.argv[2], sys.argv[3]
seen = set()
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test"):
        continue
    exe = m.get("executable")
    if not exe or exe in seen:
        continue
    seen.add(exe)
    crate = os.path.relpath(os.path.dirname(m["manifest_path"]), root)
    kind = m["target"]["kind"][0]
    print(crate, os.path.relpath(exe, target), f'{m["target"]["name"]}:{kind}')
EOF
    # The CPU reference: the same seeded model and batch as the GPU step in `run` (dfdx's CUDA
    # device draws its initial values from a CPU generator with the same seed).
    (cd "$SRC_ROOT" && env -u CARGO_TARGET_DIR cargo run --release -q -p pixel-cli -- step \
        --config configs/models/pixelllm-base.toml --steps 1 --seed 0 --json \
        > "$TARGET/cpu-step.json") || die "CPU reference step"
    local outdir files
    outdir=$(ls -d "$TARGET"/release/build/dfdx-*/out | while read -r d; do
        [ -e "$d/cuda_utils.cuh" ] && echo "$d"; done | head -1)
    [ -n "$outdir" ] || die "no dfdx OUT_DIR with kernels"
    files=$(awk '{print $2}' "$TARGET/gpu-manifest.txt")
    (cd "$TARGET" && tar cf - gpu-manifest.txt cpu-step.json release/pixel ${files} "${outdir#$TARGET/}" |
        xz -T1 -9 --lzma2=dict=256MiB > "$PACK") || die "pack"
    # Sources built from a copy: its configs, assets and fixtures travel too (the tests read them).
    rm -f "$TARGET/gpu-src.tar.xz"
    if [ "$(readlink -f "$SRC_ROOT")" != "$(readlink -f "$BUILD_ROOT")" ]; then
        (cd "$SRC_ROOT" && tar cf - --exclude='./target*' --exclude=./.git . | xz -T1 -6 \
            > "$TARGET/gpu-src.tar.xz") || die "pack sources"
    fi
    cat "$TARGET/gpu-manifest.txt"
    ls -la "$TARGET"/gpu-*.tar.xz
}

cmd_run() {
    local out=${1:-${OUT:-$PWD/gpu-out}} here
    mkdir -p "$out"
    here=$(pwd -P)
    exec > >(tee -a "$out/log.txt") 2>&1
    echo "== $(date -u) gpu_check run in $here"
    nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
    local r src=$here
    if [ -f "$here/target-cuda/gpu-src.tar.xz" ]; then    # the copy the binaries were built from
        src=$here/target-cuda/src
        rm -rf "$src" && mkdir -p "$src" && xz -dc "$here/target-cuda/gpu-src.tar.xz" |
            tar xf - -C "$src" || die "unpack sources"
    fi
    for r in "$BUILD_ROOT:$here" "$SRC_ROOT:$src"; do
        [ "$(readlink -f "${r%%:*}")" = "$(readlink -f "${r#*:}")" ] && continue
        [ -e "${r%%:*}" ] && die "${r%%:*} exists and is not ${r#*:}"
        mkdir -p "$(dirname "${r%%:*}")" && ln -s "${r#*:}" "${r%%:*}" || die "symlink $r"
        echo "linked ${r%%:*} -> ${r#*:}"
    done
    [ -f "$here/target-cuda/gpu-pack.tar.xz" ] || die "no target-cuda/gpu-pack.tar.xz (carry it)"
    [ -e "$here/cuda-root/include/cuda_fp16.h" ] || die "no cuda-root/include (carry it)"
    if command -v xz >/dev/null; then
        (cd "$here/target-cuda" && xz -dc gpu-pack.tar.xz | tar xf -) || die "unpack"
    else
        (cd "$here/target-cuda" && python3 -c \
            'import tarfile; tarfile.open("gpu-pack.tar.xz").extractall()') || die "unpack"
    fi
    # CUDA 13 libraries: the python `nvidia` wheels (torch cu130); libcuda from the driver.
    local libs
    libs=$(python3 - <<'EOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = []
for r in roots:
    for pat in ("libcublas.so.13*", "libcublasLt.so.13*", "libnvrtc.so.13*", "libnvrtc-builtins.so*"):
        for f in glob.glob(os.path.join(r, "**", pat), recursive=True):
            d = os.path.dirname(f)
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
EOF
)
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
        [ -e "$d/libcuda.so.1" ] && libs=$libs:$d && break
    done
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd "$here/target-cuda/release/pixel" | grep -E 'cuda|cublas|nvrtc|not found'
    local budget=${GPU_CHECK_BUDGET_S:-300} per=${GPU_CHECK_PER_BIN_S:-150} start=$SECONDS
    local threads=${TEST_THREADS:-4} crate bin name rc t0 line left exe m=$here/target-cuda/gpu-manifest.txt
    export RUST_BACKTRACE=${RUST_BACKTRACE:-0}
    : > "$out/summary.txt"
    # Order: binaries that link libcuda (they use the GPU; lib tests first), then pixel-cli's tests
    # (they run the `pixel` binary, which links it), then the CPU-only rest.
    local order
    order=$(while read -r crate bin name; do
        if grep -q libcuda.so.1 "$here/target-cuda/$bin"; then k=0; else k=2; fi
        [ "$crate" = pixel-cli ] && [ $k = 2 ] && k=1
        case $name in *:lib) k=${k}0 ;; *) k=${k}1 ;; esac
        echo "$k $crate $bin $name"
    done < "$m" | sort -s -k1,1 | cut -d' ' -f2-)
    while read -r crate bin name; do
        left=$(( budget - (SECONDS - start) ))
        if (( left < 10 )); then
            echo "SKIPPED (out of time) $name ($crate)" | tee -a "$out/summary.txt"; continue
        fi
        (( left > per )) && left=$per
        exe=$BUILD_ROOT/target-cuda/$bin
        echo; echo "==== $name ($crate, $bin), limit ${left}s"
        t0=$SECONDS
        (cd "$SRC_ROOT/$crate" && timeout -k 5 "$left" "$exe" --test-threads="$threads" \
            ${GPU_CHECK_ARGS:-}) > "$out/cur.txt" 2>&1
        rc=$?
        cat "$out/cur.txt"
        line=$(grep -E '^test result:' "$out/cur.txt" | tail -1)
        echo "$name ($crate) rc=$rc $((SECONDS - t0))s ${line:-NO RESULT LINE}" |
            tee -a "$out/summary.txt"
        grep -E '^test .* FAILED$' "$out/cur.txt" | sed 's/^/    /' >> "$out/summary.txt"
        grep -E -A4 "^---- .* stdout ----$" "$out/cur.txt" | grep -v '^--$' | cut -c1-300 |
            sed 's/^/      /' >> "$out/summary.txt"
        # A CUDA error can abort the whole binary (a panic inside a panic): then run its tests one
        # by one, 4 at a time, to tell which ones fail.
        left=$(( budget - (SECONDS - start) ))
        if [ -z "$line" ] && [ "$rc" != 124 ] && (( left > 20 )); then
            echo "  per-test rerun of $name, ${left}s left" | tee -a "$out/summary.txt"
            (cd "$SRC_ROOT/$crate" && "$exe" --list --format=terse 2>/dev/null |
                sed -n 's/: test$//p' > "$out/names.txt")
            (cd "$SRC_ROOT/$crate" && export exe out && timeout -k 5 "$left" xargs -a "$out/names.txt" -d '\n' -P "$threads" \
                -I{} timeout -k 5 $(( left > 60 ? 60 : left )) bash -c \
                'o=$("$exe" --exact "$1" --test-threads=1 2>&1); r=$?
                 if [ $r = 0 ]; then echo "ok $1"; else echo "FAIL($r) $1";
                 echo "$o" | grep -E -A3 "panicked|error" | head -6 | cut -c1-300 | sed "s/^/        /"; fi' _ {}) \
                > "$out/pertest.txt" 2>&1
            cat "$out/pertest.txt"
            echo "    per-test: $(grep -c '^ok ' "$out/pertest.txt") ok, $(grep -c '^FAIL' "$out/pertest.txt") failed of $(wc -l < "$out/names.txt")" |
                tee -a "$out/summary.txt"
            grep -v '^ok ' "$out/pertest.txt" | sed 's/^/    /' >> "$out/summary.txt"
        fi
    done <<< "$order"
    rm -f "$out/cur.txt" "$out/names.txt" "$out/pertest.txt"
    # One pixelllm-base training step on the GPU against the CPU's (built in `build`).
    echo; echo "==== pixelllm-base step on the GPU"
    (cd "$SRC_ROOT" && timeout -k 5 "${GPU_CHECK_STEP_S:-240}" "$BUILD_ROOT/target-cuda/release/pixel" \
        step --config configs/models/pixelllm-base.toml --steps 1 --seed 0 --json \
        > "$out/gpu-step.json")
    echo "pixelllm-base step rc=$?" | tee -a "$out/summary.txt"
    python3 - "$here/target-cuda/cpu-step.json" "$out/gpu-step.json" <<'EOF' 2>&1 |
import json, sys
cpu, gpu = (json.load(open(p))["steps"][0] for p in sys.argv[1:3])
diff = abs(gpu["loss"] - cpu["loss"]) / abs(cpu["loss"])
verdict = "OK" if diff <= 1e-4 else "DIFFERS"
print(f"pixelllm-base step loss: cpu {cpu['loss']:.6f} gpu {gpu['loss']:.6f} relative diff {diff:.2e} "
      f"{verdict}; gpu forward {gpu['forward_s']:.2f} s backward {gpu['backward_s']:.2f} s "
      f"update {gpu['update_s']:.2f} s")
EOF
        tee -a "$out/summary.txt"
    echo; echo "== summary"; cat "$out/summary.txt"
}

case "${1:-}" in
    setup) cmd_setup ;;
    build) cmd_build ;;
    run) shift; cmd_run "$@" ;;
    *) sed -n '2,25p' "$0"; exit 2 ;;
esac
