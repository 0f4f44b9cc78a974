#!/usr/bin/env python3
"""Builds the airamp-nccl wheel from the portable artifacts in dist/.

    python3 python/build_wheel.py --so dist/libnccl-net-airamp.so \
        --cli dist/airamp --out dist/wheels

The wheel is a zip laid out as PEP 427 says, written with the standard
library only: there is nothing to compile here (scripts/build-plugin built
both files with cargo-zigbuild against glibc 2.28), so no build backend is
fetched and no second cargo build runs. Layout:

    airamp/__init__.py, airamp/__main__.py       python -m airamp {path,env}
    airamp/lib/libnccl-net-airamp.so             the plugin
    airamp_nccl-V.data/scripts/airamp            the CLI (pip puts it in bin/)
    airamp_nccl-V.dist-info/{LICENSE,METADATA,WHEEL,RECORD}

The tag is py3-none-<platform>: any Python 3 (no extension module), one
platform. The platform defaults to manylinux_2_28_x86_64, what the
artifacts need (scripts/check-portable); scripts/check-wheel checks it
against `auditwheel show`.
"""

import argparse
import base64
import hashlib
import io
import os
import re
import sys
import zipfile

NAME = "airamp-nccl"
DIST = "airamp_nccl"  # the distribution name as wheel file names spell it
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Fixed timestamps: the same inputs give the same wheel, byte for byte.
EPOCH = (1980, 1, 1, 0, 0, 0)


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    m = re.search(r'^version\s*=\s*"([^"]+)"', package, re.M)
    if not m:
        sys.exit("build_wheel: no version in Cargo.toml [package]")
    return m.group(1)


def record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def metadata(version):
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    return (
        "Metadata-Version: 2.1\n"
        "Name: {name}\n"
        "Version: {version}\n"
        "Summary: NCCL net / collective-network / tuner plugin: fast TCP, verbs, "
        "FP8 compressed allreduce\n"
        "License: MIT\n"
        "Requires-Python: >=3.7\n"
        "Classifier: License :: OSI Approved :: MIT License\n"
        "Classifier: Operating System :: POSIX :: Linux\n"
        "Classifier: Programming Language :: Rust\n"
        "Description-Content-Type: text/markdown\n"
        "\n{readme}"
    ).format(name=NAME, version=version, readme=readme)


def build(so, cli, out_dir, plat):
    version = cargo_version()
    tag = "py3-none-" + plat
    dist_info = "{}-{}.dist-info".format(DIST, version)
    data = "{}-{}.data".format(DIST, version)
    files = []  # (archive name, bytes, mode)

    def add_file(arcname, path, mode):
        with open(path, "rb") as f:
            files.append((arcname, f.read(), mode))

    for py in ("__init__.py", "__main__.py"):
        add_file("airamp/" + py, os.path.join(HERE, "airamp", py), 0o644)
    add_file("airamp/lib/libnccl-net-airamp.so", so, 0o755)
    add_file(data + "/scripts/airamp", cli, 0o755)
    # MIT: the notice travels with every copy.
    add_file(dist_info + "/LICENSE", os.path.join(ROOT, "LICENSE"), 0o644)
    files.append((dist_info + "/METADATA", metadata(version).encode(), 0o644))
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: airamp python/build_wheel.py\n"
        "Root-Is-Purelib: false\n"
        "Tag: {}\n"
    ).format(tag)
    files.append((dist_info + "/WHEEL", wheel.encode(), 0o644))

    record = io.StringIO()
    for arcname, content, _ in files:
        record.write("{},{},{}\n".format(arcname, record_hash(content), len(content)))
    record.write(dist_info + "/RECORD,,\n")
    files.append((dist_info + "/RECORD", record.getvalue().encode(), 0o644))

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "{}-{}-{}.whl".format(DIST, version, tag))
    tmp = path + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, content, mode in files:
            info = zipfile.ZipInfo(arcname, EPOCH)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, content, compresslevel=6)
    os.replace(tmp, path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--so", default=os.path.join(ROOT, "dist", "libnccl-net-airamp.so"))
    ap.add_argument("--cli", default=os.path.join(ROOT, "dist", "airamp"))
    ap.add_argument("--out", default=os.path.join(ROOT, "dist", "wheels"))
    ap.add_argument("--plat", default="manylinux_2_28_x86_64")
    args = ap.parse_args()
    print(build(args.so, args.cli, args.out, args.plat))


if __name__ == "__main__":
    main()
