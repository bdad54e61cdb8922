// Tokenizer decode of arbitrary ids (4 bytes each, little endian; out-of-range and negative ids
// included) with a real tokenizer: ids outside the vocabulary are a clean error; the streaming
// decoder gives exactly the text of Decode.
#include <cstring>

#include "core/error.h"
#include "tests/fuzz/fuzz_target.h"
#include "tokenizer/tokenizer.h"

DSV3_FUZZ_TARGET(tokenizer_decode) {
  const dsv3::Tokenizer& tokenizer = dsv3::fuzz::LoadedTokenizer();
  if (size == 0) return;
  // The first byte picks the options; every further 4 bytes are one id. Ids are mostly folded
  // into the vocabulary (bit 1 clear) so decoding gets past the range check.
  const bool skip_special = data[0] & 1;
  const bool fold = !(data[0] & 2);
  std::vector<int32_t> ids((size - 1) / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, data + 1 + 4 * i, 4);
    ids[i] = fold ? static_cast<int32_t>(u % static_cast<uint32_t>(tokenizer.vocab_size()))
                  : static_cast<int32_t>(u);
  }
  std::string text;
  bool valid = true;
  try {
    text = tokenizer.Decode(ids, skip_special);
  } catch (const dsv3::Error&) {
    valid = false;
  }
  std::string streamed;
  dsv3::StreamDecoder stream(tokenizer, skip_special);
  try {
    for (int32_t id : ids) streamed += stream.Push(id);
    streamed += stream.Finish();
  } catch (const dsv3::Error&) {
    dsv3::fuzz::Check(!valid, "StreamDecoder rejected ids that Decode accepted");
    return;
  }
  dsv3::fuzz::Check(valid, "StreamDecoder accepted ids that Decode rejected");
  dsv3::fuzz::Check(streamed == text, "streamed text differs from Decode");
}
