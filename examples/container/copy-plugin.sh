# Entrypoint of the airamp initContainer image (run by /bin/busybox sh).
# Copies the plugin from /airamp into the directory given as $1 (default
# /plugin), which is a volume shared with the training container, and checks
# the copy. The .so is first written under a temporary name and renamed, so a
# reader never sees a half-written library.
set -eu
bb=/bin/busybox
dest="${1:-/plugin}"
if [ ! -d "$dest" ]; then
    echo "airamp-plugin: $dest is not a directory (mount a volume there)" >&2
    exit 1
fi
if ! $bb grep -q " ${dest%/} " /proc/mounts 2>/dev/null; then
    echo "airamp-plugin: warning: $dest is not a mount point; the copy stays inside this container" >&2
fi
so=libnccl-net-airamp.so
$bb cp /airamp/$so "$dest/.$so.tmp"
$bb chmod 0755 "$dest/.$so.tmp"
$bb mv -f "$dest/.$so.tmp" "$dest/$so"
$bb cmp /airamp/$so "$dest/$so"
$bb ln -sfn $so "$dest/libnccl-tuner-airamp.so"
echo "airamp-plugin: copied $so ($($bb stat -c %s "$dest/$so") bytes, sha256 $($bb sha256sum "$dest/$so" | $bb cut -d' ' -f1)) into $dest"
echo "airamp-plugin: set NCCL_NET_PLUGIN=$dest/$so in the training container"
