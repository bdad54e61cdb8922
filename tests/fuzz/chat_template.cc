// The chat-template interpreter: random templates with random messages, and the real DeepSeek
// template (see TokenizerPath) with random messages. Input: one flags byte, then either
//   (flags bit 1 clear) a template, a NUL byte, and the messages JSON, or
//   (flags bit 1 set) the messages JSON for the real template.
// Flags bit 0 is add_generation_prompt. A messages part that is not JSON renders an empty
// conversation, so template mutations still run.
#include "tokenizer/chat_template.h"

#include <cstring>
#include <memory>
#include <string_view>

#include "core/error.h"
#include "core/json.h"
#include "tests/fuzz/fuzz_target.h"
#include "tokenizer/tokenizer_config.h"

namespace {

const dsv3::ChatTemplate& RealTemplate() {
  static const std::unique_ptr<dsv3::ChatTemplate> t = [] {
    const dsv3::TokenizerConfig config =
        dsv3::TokenizerConfig::Load(dsv3::fuzz::TokenizerPath() + "/tokenizer_config.json");
    return std::make_unique<dsv3::ChatTemplate>(config);
  }();
  return *t;
}

dsv3::OrderedJson Messages(std::string_view text) {
  try {
    dsv3::OrderedJson j = dsv3::ParseOrderedJson(text, "messages");
    if (j.is_array()) return j;
    if (j.is_object()) return dsv3::OrderedJson::array({j});
  } catch (const dsv3::Error&) {
  }
  return dsv3::OrderedJson::array();
}

}  // namespace

DSV3_FUZZ_TARGET(chat_template) {
  if (size == 0) {  // the warm-up call: load the real template
    RealTemplate();
    return;
  }
  const bool add_generation_prompt = data[0] & 1;
  const bool real = data[0] & 2;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (real) {
    RealTemplate().Apply(Messages(rest), add_generation_prompt);
    return;
  }
  const size_t nul = rest.find('\0');
  dsv3::TokenizerConfig config;
  config.path = "fuzz/tokenizer_config.json";
  config.chat_template = std::string(rest.substr(0, nul));
  config.bos_token = "<s>";
  config.eos_token = "</s>";
  if (config.chat_template.empty()) return;
  const dsv3::ChatTemplate chat(config);
  const dsv3::OrderedJson messages =
      Messages(nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1));
  chat.Apply(messages, add_generation_prompt);
}
