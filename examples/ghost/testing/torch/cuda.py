import time, threading
_tl = threading.local()
def is_available(): return True
def init(): pass
def synchronize(): pass
class _Props:
    name = "MOCK H200"; multi_processor_count = 132; L2_cache_size = 60 << 20; uuid = "abcd-ef"
def get_device_properties(i): return _Props()
class Stream:
    def __init__(self, priority=0): self.priority = priority
    @staticmethod
    def priority_range(): return (0, -5)
    def synchronize(self): pass
    def wait_stream(self, s): pass
class _Ctx:
    def __init__(self, s): self.s = s
    def __enter__(self):
        self.prev = getattr(_tl, "s", None); _tl.s = self.s
    def __exit__(self, *a): _tl.s = self.prev
def stream(s): return _Ctx(s)
def current_stream(): return getattr(_tl, "s", None) or Stream()
class Event:
    def __init__(self, enable_timing=False): self.t = None; self.timing = enable_timing
    def record(self, stream=None): self.t = time.perf_counter()
    def synchronize(self): assert self.t is not None
    def query(self): return True
    def elapsed_time(self, o):
        assert self.timing and o.timing, "elapsed_time needs enable_timing"
        return (o.t - self.t) * 1e3
def _sleep(cycles): time.sleep(cycles / 2e9 / 50)
class CUDAGraph:
    def replay(self): pass
class graph:
    def __init__(self, g, stream=None): pass
    def __enter__(self): return self
    def __exit__(self, *a): pass
class nccl:
    @staticmethod
    def version(): return (2, 28, 9)
