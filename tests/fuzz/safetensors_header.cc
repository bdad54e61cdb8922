// The safetensors header of a whole file held in memory: length prefix, JSON header, dtypes,
// shapes and data offsets.
#include "io/safetensors.h"
#include "tests/fuzz/fuzz_target.h"

DSV3_FUZZ_TARGET(safetensors_header) {
  const dsv3::SafetensorsHeader header = dsv3::ParseSafetensors({data, size}, "fuzz.safetensors");
  // Every accepted tensor lies inside the file and has the bytes its shape needs.
  for (const dsv3::TensorInfo& t : header.tensors) {
    dsv3::fuzz::Check(t.data >= data && t.data + t.nbytes <= data + size,
                      "tensor outside the file");
    dsv3::fuzz::Check(static_cast<uint64_t>(t.numel()) * dsv3::DTypeSize(t.dtype) == t.nbytes,
                      "tensor size does not match its shape");
    volatile uint8_t sink = 0;
    if (t.nbytes > 0) sink = t.data[0] ^ t.data[t.nbytes - 1];
    (void)sink;
  }
}
