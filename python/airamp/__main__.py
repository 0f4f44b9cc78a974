"""python -m airamp {path|env}"""

import shlex
import sys

from . import nccl_env, plugin_path

USAGE = """usage: python -m airamp COMMAND
  path   print the absolute path of libnccl-net-airamp.so
  env    print the shell lines that make NCCL load it:
           eval "$(python -m airamp env)"
The airamp CLI (airamp devices, airamp config check, ...) is installed
beside this Python as `airamp`."""


def main(argv):
    if argv == ["path"]:
        print(plugin_path())
        return 0
    if argv == ["env"]:
        for key, value in nccl_env().items():
            print("export {}={}".format(key, shlex.quote(value)))
        return 0
    if argv in (["-h"], ["--help"], ["help"]):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
