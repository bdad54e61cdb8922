// tokenizer_config.json, the transformers side of a tokenizer: whether encode() adds BOS/EOS,
// the special-token strings handed to the chat template, and the chat template itself.
#pragma once

#include <optional>
#include <string>

#include "core/json.h"

namespace dsv3 {

// Limit on the size of tokenizer_config.json (untrusted input).
inline constexpr size_t kMaxTokenizerConfigBytes = 64u << 20;

struct TokenizerConfig {
  std::string path;  // where it was read from ("" when absent), for error messages
  std::string tokenizer_class;
  // Whether add_bos_token / add_eos_token decide what encode() adds (transformers' Llama
  // tokenizers, or any config that sets the fields); otherwise tokenizer.json's post-processor
  // decides.
  bool bos_eos_from_config = false;
  bool add_bos_token = false;
  bool add_eos_token = false;
  // Special-token strings (the "content" of an AddedToken object, or a plain string).
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
  std::string chat_template;  // empty: none
  bool clean_up_tokenization_spaces = false;

  // Reads `path`; throws dsv3::Error naming the file and field on bad content.
  static TokenizerConfig Load(const std::string& path);
  static TokenizerConfig FromJson(const Json& j, const std::string& what);
};

}  // namespace dsv3
