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
    # reference in benchmarks; prometheus: promtool to validate the exporter.
    apt_install iproute2 iperf3 prometheus
}
