// A model's chat template (the Jinja "chat_template" of tokenizer_config.json) rendered as
// transformers' apply_chat_template does: the template sees `messages`, `add_generation_prompt`
// and the special-token strings (bos_token, eos_token, pad_token, unk_token), plus any extra
// variables such as `tools`.
#pragma once

#include <string>

#include "core/json.h"
#include "jinja/jinja.h"
#include "tokenizer/tokenizer_config.h"

namespace dsv3 {

class ChatTemplate {
 public:
  // Throws dsv3::Error when the config has no chat template or the template does not parse.
  explicit ChatTemplate(const TokenizerConfig& config);

  // `messages` is an array of message objects; `extra` (an object) adds or overrides variables.
  std::string Apply(const OrderedJson& messages, bool add_generation_prompt,
                    const OrderedJson& extra = OrderedJson::object()) const;

 private:
  OrderedJson tokens_;  // the special-token strings
  jinja::Template template_;
};

}  // namespace dsv3
