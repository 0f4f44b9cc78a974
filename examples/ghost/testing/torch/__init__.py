"""Shape-checking stand-in for torch (tests only): drives ghost_probe.py's GPU code path
on a machine without CUDA. Timings are host sleeps, meaningless."""
import math, time, threading
__version__ = "mock"
bfloat16, float32, uint8 = "bf16", "f32", "u8"
class version: cuda = "mock"
class device:
    def __init__(self, kind, idx=0): self.kind, self.idx = kind, idx
class Tensor:
    def __init__(self, shape, dtype="f32", strides_ok=True):
        self.shape = tuple(shape); self.dtype = dtype
    def numel(self): return math.prod(self.shape)
    def __matmul__(self, o):
        assert self.shape[-1] == o.shape[0], (self.shape, o.shape)
        return Tensor(self.shape[:-1] + (o.shape[-1],), self.dtype)
    def __add__(self, o):
        if isinstance(o, Tensor): assert self.shape == o.shape, (self.shape, o.shape)
        return Tensor(self.shape, self.dtype)
    __radd__ = __add__
    def __mul__(self, o): return Tensor(self.shape, self.dtype)
    __rmul__ = __mul__
    def split(self, n, dim=-1):
        d = self.shape[dim]; assert d % n == 0, (self.shape, n)
        return tuple(Tensor(self.shape[:-1] + (n,), self.dtype) for _ in range(d // n))
    def view(self, *s):
        assert math.prod(s) == self.numel(), (self.shape, s); return Tensor(s, self.dtype)
    reshape = view
    def transpose(self, a, b):
        s = list(self.shape); s[a], s[b] = s[b], s[a]; return Tensor(s, self.dtype)
    def zero_(self): _kernel(30); return self
    def mul_(self, x): _kernel(2); return self
def _kernel(us): time.sleep(us / 1e6 / 50)
def _t(shape, dtype="f32", device=None):
    assert device is not None
    return Tensor(shape if isinstance(shape, tuple) else shape, dtype)
def zeros(*s, dtype="f32", device=None): return _t(s, dtype, device)
def ones(*s, dtype="f32", device=None): return _t(s, dtype, device)
def empty(*s, dtype="f32", device=None): return _t(s, dtype, device)
def randn(*s, dtype="f32", device=None): return _t(s, dtype, device)
def mm(a, b, out=None):
    assert a.shape[1] == b.shape[0] and out.shape == (a.shape[0], b.shape[1]); _kernel(214)
from . import cuda, nn  # noqa
