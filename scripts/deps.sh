# Installs what the scripts need on Debian/Ubuntu when it is missing.
# Sourced by scripts/build-plugin, scripts/demo and scripts/test.

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_build_deps() {
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install Rust >= 1.80 with rustup (https://rustup.rs), then re-run" >&2
        exit 1
    fi
    # libclang for bindgen over nccl-headers/, a C compiler for the test logger.
    apt_install libclang-dev gcc libc6-dev pkg-config
}

ensure_test_deps() {
    ensure_build_deps
    # iproute2: network namespaces and tc for shaped links; iperf3: the
    # reference in benchmarks; prometheus: promtool to validate the exporter;
    # clang-19: compile-checks the GPU kernels as HIP (scripts/hip-check).
    apt_install iproute2 iperf3 prometheus clang-19 python3-pip
    ensure_nvrtc
}

# NVRTC 13.0 from PyPI into target/nvrtc (no system Python is touched), so
# `airamp gpu compile-check` can compile the CUDA kernels without a GPU.
# Exports AIRAMP_NVRTC_LIB, which the plugin and CLI read to find it.
ensure_nvrtc() {
    local dir=target/nvrtc
    local lib="$dir/nvidia/cu13/lib"
    if [ ! -e "$lib/libnvrtc.so.13" ]; then
        echo "installing NVRTC 13.0 into $dir"
        python3 -m pip install --quiet --disable-pip-version-check --no-deps \
            --target "$dir" 'nvidia-cuda-nvrtc==13.0.*'
    fi
    export AIRAMP_NVRTC_LIB="$PWD/$lib"
}
