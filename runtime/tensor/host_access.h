// Host-side access to small tensors of any backend: the routing metadata
// (expert choices, counts, offsets) that host code must read to size its
// work and its collectives. Zero-copy when the memory is host memory.
#pragma once

#include "runtime/tensor/tensor.h"

namespace tessera {

// `t` itself when its memory is host memory, else a host copy of it.
inline Tensor HostReadable(const Tensor& t) {
  if (t.on_host()) return t;
  Tensor host = Tensor::Empty(t.dtype(), t.shape());
  t.backend().CopyToHost(host.raw(), t.address(), t.bytes());
  return host;
}

// Host memory to fill for `t`: `t` itself when its memory is host memory,
// else a new host tensor of its shape (WriteBack copies it over).
inline Tensor HostWritable(const Tensor& t) {
  if (t.on_host()) return t;
  return Tensor::Empty(t.dtype(), t.shape());
}

// Makes `t` hold the values of `host` (a HostReadable of it, possibly
// modified); nothing to do when they share memory.
inline void WriteBack(const Tensor& host, const Tensor& t) {
  if (host.address() != t.address()) t.backend().CopyToDevice(t.address(), host.raw(), t.bytes());
}

}  // namespace tessera
