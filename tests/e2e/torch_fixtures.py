"""PyTorch checkpoints for the tests, written by torch itself (torch.save) or,
for files torch would never write, pickled by hand with Python's pickle
module and zipped with zipfile: a state dict whose tensors are any view
(storage, offset, size, stride) of any storage bytes."""
import collections
import io
import pickle
import zipfile

import numpy as np
import torch

# torch dtype -> (safetensors dtype, numpy type holding the raw elements).
TORCH_DTYPES = {
    torch.float64: ("F64", np.float64), torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.uint16), torch.int64: ("I64", np.int64), torch.int32: ("I32", np.int32),
    torch.int16: ("I16", np.int16), torch.int8: ("I8", np.int8), torch.uint8: ("U8", np.uint8),
    torch.bool: ("BOOL", np.bool_),
}
# Same-size integer types, to take any tensor's bytes (bf16 has no numpy type).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def raw_of(tensor):
    """(safetensors dtype, numpy array of the raw elements) of tensor.contiguous(): what torch shows."""
    t = tensor.detach().contiguous()
    name, np_type = TORCH_DTYPES[t.dtype]
    flat = t.reshape(-1)
    if t.dtype in (torch.bfloat16, torch.float16):
        flat = flat.view(_BITS[t.element_size()])
    array = flat.numpy().view(np_type) if t.dtype != torch.bool else flat.numpy()
    return name, array.reshape(tuple(t.shape))


def expected(state_dict):
    return {name: raw_of(t) for name, t in state_dict.items() if isinstance(t, torch.Tensor)}


def rich_state_dict(seed=0):
    """Every case the reader must get right: tied weights (one tensor under two names, and two views of one
    storage), views with offsets and strides, a transpose saved as is, every storage dtype, a Parameter, a
    0-d scalar and an empty tensor, in an OrderedDict with state_dict()'s _metadata attribute."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(12, 10, generator=g)
    sd = collections.OrderedDict()
    sd["embed.weight"] = base
    sd["lm_head.weight"] = base                      # the same tensor twice (tied)
    sd["embed.rows"] = base[3:7]                     # rows of the same storage, offset 30
    sd["embed.cols"] = base[2:9, 1:8:3]              # offset and strides (10, 3)
    sd["embed.transposed"] = base.t()                # strides (1, 10)
    sd["embed.every_other"] = base.reshape(-1)[1::2]  # stride 2
    sd["f64.weight"] = torch.randn(5, 3, dtype=torch.float64, generator=g).t()
    sd["f16.weight"] = torch.randn(4, 6, generator=g).to(torch.float16)
    sd["bf16.weight"] = torch.randn(7, 3, generator=g).to(torch.bfloat16)[:, 1:]
    sd["i64.ids"] = torch.arange(-20, 20, 3, dtype=torch.int64)
    sd["i32.ids"] = torch.arange(24, dtype=torch.int32).reshape(2, 3, 4).permute(2, 0, 1)
    sd["i16.ids"] = torch.arange(-5, 5, dtype=torch.int16)
    sd["i8.ids"] = torch.arange(-8, 8, dtype=torch.int8)
    sd["u8.ids"] = torch.arange(0, 250, 7, dtype=torch.uint8)
    sd["bool.mask"] = torch.eye(5, dtype=torch.bool)[1:4].t()
    sd["param"] = torch.nn.Parameter(torch.randn(3, 2, generator=g))
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["conv.weight"] = torch.randn(2, 3, 4, 5, generator=g).permute(0, 2, 3, 1)
    sd._metadata = collections.OrderedDict({"": {"version": 1}, "embed": {"version": 2}})
    return sd


# --- files torch would not write ---

class FakeStorage:
    """Pickled as a persistent id ('storage', storage_type, key, location, numel)."""

    def __init__(self, key, storage_type, numel, location="cpu"):
        self.key, self.storage_type, self.numel, self.location = key, storage_type, numel, location


class FakeTensor:
    """Pickled as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""

    def __init__(self, storage, offset, size, stride, extra=()):
        self.storage, self.offset, self.size, self.stride, self.extra = storage, offset, size, stride, extra

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict())
                + tuple(self.extra))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.storage_type, obj.key, obj.location, obj.numel)
        return None


def pickle_bytes(obj, protocol=2):
    f = io.BytesIO()
    _Pickler(f, protocol=protocol).dump(obj)
    return f.getvalue()


def write_torch_zip(path, pkl, storages, archive="archive", byteorder=None, compressed=()):
    """A zip as torch.save lays it out: ARCHIVE/data.pkl, ARCHIVE/data/KEY (stored unless KEY is in
    `compressed`), ARCHIVE/byteorder if given, ARCHIVE/version."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("%s/data.pkl" % archive, pkl)
        if byteorder is not None:
            z.writestr("%s/byteorder" % archive, byteorder)
        for key, data in storages.items():
            method = zipfile.ZIP_DEFLATED if key in compressed else zipfile.ZIP_STORED
            z.writestr(zipfile.ZipInfo("%s/data/%s" % (archive, key)), data, compress_type=method)
        z.writestr("%s/version" % archive, "3\n")


def one_tensor_zip(path, values=np.arange(12, dtype=np.float32), offset=0, size=(3, 4), stride=(4, 1),
                   numel=None, extra_dict=None, **zip_args):
    """A zip holding {'w': a view of one float32 storage '0' of `values`} (and `extra_dict`'s items)."""
    storage = FakeStorage("0", torch.FloatStorage, len(values) if numel is None else numel)
    sd = collections.OrderedDict(w=FakeTensor(storage, offset, size, stride))
    sd.update(extra_dict or {})
    write_torch_zip(path, pickle_bytes(sd), {"0": np.asarray(values, np.float32).tobytes()}, **zip_args)
