from torch import Tensor
def layer_norm(x, shape, w, b):
    assert x.shape[-1:] == tuple(shape) and w.shape == tuple(shape) and b.shape == tuple(shape)
    return Tensor(x.shape, x.dtype)
def gelu(x): return Tensor(x.shape, x.dtype)
def scaled_dot_product_attention(q, k, v):
    assert q.shape[:2] == k.shape[:2] == v.shape[:2] and q.shape[-1] == k.shape[-1] and k.shape == v.shape, (q.shape, k.shape)
    return Tensor(q.shape[:-1] + (v.shape[-1],), q.dtype)
