// model.safetensors.index.json: the weight map from tensor names to shard files.
#include <algorithm>
#include <string_view>

#include "io/safetensors.h"
#include "tests/fuzz/fuzz_target.h"

DSV3_FUZZ_TARGET(safetensors_index) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const dsv3::SafetensorsIndex index =
      dsv3::ParseSafetensorsIndex(text, "model.safetensors.index.json");
  // Accepted shard names are plain file names in the model folder.
  for (const std::string& shard : index.shards) {
    dsv3::fuzz::Check(
        !shard.empty() && shard != "." && shard != ".." && shard.find('/') == std::string::npos,
        "shard name leaves the model folder");
  }
  dsv3::fuzz::Check(std::is_sorted(index.shards.begin(), index.shards.end()), "shards not sorted");
}
