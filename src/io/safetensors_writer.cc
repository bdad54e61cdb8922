#include "io/safetensors_writer.h"

#include <algorithm>
#include <cstdio>
#include <memory>

#include "core/error.h"
#include "core/json.h"
#include "core/progress.h"

namespace dsv3 {

uint64_t TensorToWrite::nbytes() const {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

uint64_t WriteSafetensors(const std::string& path, std::vector<TensorToWrite> tensors,
                          const std::map<std::string, std::string>& metadata, Progress* progress) {
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const TensorToWrite& a, const TensorToWrite& b) {
                     if (DTypeSize(a.dtype) != DTypeSize(b.dtype))
                       return DTypeSize(a.dtype) > DTypeSize(b.dtype);
                     return a.name < b.name;
                   });
  // nlohmann's ordered_json keeps insertion order: metadata first, then tensors by offset.
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0, largest = 0;
  for (const TensorToWrite& t : tensors) {
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
    largest = std::max(largest, t.nbytes());
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) Fail("{}: cannot create", tmp);
  auto fail = [&](const char* what) {
    std::fclose(f);
    std::remove(tmp.c_str());
    Fail("{}: {} failed (disk full?)", tmp, what);
  };
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  if (std::fwrite(len, 1, 8, f) != 8 ||
      std::fwrite(text.data(), 1, text.size(), f) != text.size()) {
    fail("header write");
  }
  std::unique_ptr<uint8_t[]> buffer(new uint8_t[std::max<uint64_t>(largest, 1)]);
  for (const TensorToWrite& t : tensors) {
    t.fill(buffer.get());
    if (std::fwrite(buffer.get(), 1, t.nbytes(), f) != t.nbytes()) fail("write");
    if (progress != nullptr) progress->Add(t.nbytes());
  }
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    Fail("{}: close failed (disk full?)", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) Fail("{}: cannot rename to {}", tmp, path);
  return 8 + text.size() + offset;
}

}  // namespace dsv3
