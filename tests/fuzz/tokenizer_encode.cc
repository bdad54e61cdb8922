// Tokenizer encode of arbitrary bytes with a real tokenizer (see TokenizerPath): invalid UTF-8
// is a clean error; valid text round-trips through decode byte for byte (byte-level BPE loses
// nothing), with and without the special tokens encode adds.
#include <string_view>

#include "tests/fuzz/fuzz_target.h"
#include "tokenizer/tokenizer.h"

DSV3_FUZZ_TARGET(tokenizer_encode) {
  const dsv3::Tokenizer& tokenizer = dsv3::fuzz::LoadedTokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tokenizer.Encode(text);
  for (int32_t id : ids) dsv3::fuzz::Check(tokenizer.IsValidId(id), "encode made an invalid id");
  dsv3::fuzz::Check(tokenizer.Decode(ids) == text, "decode(encode(text)) != text");
  const std::vector<int32_t> with_special = tokenizer.Encode(text, /*add_special_tokens=*/true);
  dsv3::fuzz::Check(with_special.size() >= ids.size(), "special tokens removed ids");
}
