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
        echo "cargo not found: install Rust >= 1.89 (AVX-512 intrinsics) with rustup (https://rustup.rs), then re-run" >&2
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

# The portable toolchain for scripts/build-plugin: zig (the `ziglang` wheel)
# and cargo-zigbuild (a prebuilt wheel too), from PyPI into
# $CARGO_TARGET_DIR/zigbuild (no system Python is touched). zig links against
# glibc 2.28 stubs, so the plugin and CLI load on RHEL 8 and newer.
# Exports CARGO_ZIGBUILD (the command) and points it at that zig.
ensure_zigbuild() {
    local target_dir="${CARGO_TARGET_DIR:-target}"
    local dir
    dir="$(mkdir -p "$target_dir/zigbuild" && cd "$target_dir/zigbuild" && pwd)"
    if [ ! -x "$dir/bin/cargo-zigbuild" ] || [ ! -x "$dir/ziglang/zig" ]; then
        apt_install python3-pip
        echo "installing zig and cargo-zigbuild into $dir"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet \
            --disable-pip-version-check --no-deps --upgrade --target "$dir" \
            'ziglang==0.17.1' 'cargo-zigbuild==0.24.1'
    fi
    export CARGO_ZIGBUILD="$dir/bin/cargo-zigbuild"
    export CARGO_ZIGBUILD_ZIG_PATH="$dir/ziglang/zig"
    # zig's caches (glibc stubs, compiled C) stay beside it, not in $HOME.
    export ZIG_GLOBAL_CACHE_DIR="$dir/cache"
    export CARGO_ZIGBUILD_CACHE_DIR="$dir/cargo-zigbuild-cache"
    # The glibc-versioned target is the host triple: normally installed, but
    # a toolchain set up for another host needs the std for it.
    local triple=x86_64-unknown-linux-gnu
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
        rustup target add "$triple"
    fi
}
