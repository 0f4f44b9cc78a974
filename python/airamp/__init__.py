"""airamp: NCCL net / collective-network / tuner plugin, packaged for pip.

The wheel carries the plugin library (``airamp/lib/libnccl-net-airamp.so``)
and the ``airamp`` CLI. NCCL finds the plugin through two environment
variables, which must be set before NCCL initialises (before
``torch.distributed.init_process_group`` or the launcher starts workers)::

    eval "$(python -m airamp env)"

or, from Python, ``os.environ.update(airamp.nccl_env())``.
"""

import os

__all__ = ["plugin_path", "nccl_env"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def plugin_path():
    """Absolute path of the installed libnccl-net-airamp.so."""
    path = os.path.join(_HERE, "lib", "libnccl-net-airamp.so")
    if not os.path.isfile(path):
        raise FileNotFoundError("airamp plugin library missing from the install: " + path)
    return path


def nccl_env():
    """The variables that make NCCL load airamp: the net and collnet plugin,
    and the tuner (the same library exports ncclTunerPlugin_v2..v6; NCCL
    dlopens NCCL_TUNER_PLUGIN as given, so an absolute path works)."""
    so = plugin_path()
    return {"NCCL_NET_PLUGIN": so, "NCCL_TUNER_PLUGIN": so}
