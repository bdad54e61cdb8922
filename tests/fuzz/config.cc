// config.json: JSON parsing, validation of every field, and the tensor list the config implies
// (what `dsv3 info` and the checkpoint validation compute from it).
#include "model/config.h"

#include <string_view>

#include "core/json.h"
#include "model/tensor_specs.h"
#include "tests/fuzz/fuzz_target.h"

DSV3_FUZZ_TARGET(config) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const dsv3::Json json = dsv3::ParseJson(text, "config.json");
  const dsv3::Config c = dsv3::Config::FromJson(json, "config.json");
  const std::vector<dsv3::TensorSpec> specs = dsv3::MainTensorSpecs(c);
  dsv3::fuzz::Check(!specs.empty(), "a valid config implies no tensors");
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) dsv3::MtpTensorSpecs(c, k);
}
