#include "tokenizer/tokenizer_config.h"

#include "core/error.h"

namespace dsv3 {
namespace {

std::optional<std::string> TokenString(const Json& j, const char* key, const std::string& what) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  const Json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  Fail("{}: {}: expected a string or an AddedToken object with \"content\"", what, key);
}

}  // namespace

TokenizerConfig TokenizerConfig::Load(const std::string& path) {
  return FromJson(ReadJsonFile(path, kMaxTokenizerConfigBytes), path);
}

TokenizerConfig TokenizerConfig::FromJson(const Json& j, const std::string& what) {
  if (!j.is_object()) Fail("{}: expected a JSON object", what);
  TokenizerConfig c;
  c.path = what;
  if (j.contains("tokenizer_class") && j["tokenizer_class"].is_string()) {
    c.tokenizer_class = j["tokenizer_class"].get<std::string>();
  }
  // transformers' Llama tokenizers add BOS (and not EOS) unless told otherwise, by replacing
  // the post-processor with a template.
  const bool llama = c.tokenizer_class.rfind("LlamaTokenizer", 0) == 0;
  c.add_bos_token = llama;
  for (const char* key : {"add_bos_token", "add_eos_token"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!j[key].is_boolean()) Fail("{}: {}: expected true or false", what, key);
    (std::string(key) == "add_bos_token" ? c.add_bos_token : c.add_eos_token) = j[key].get<bool>();
    c.bos_eos_from_config = true;
  }
  c.bos_eos_from_config = c.bos_eos_from_config || llama;
  c.bos_token = TokenString(j, "bos_token", what);
  c.eos_token = TokenString(j, "eos_token", what);
  c.pad_token = TokenString(j, "pad_token", what);
  c.unk_token = TokenString(j, "unk_token", what);
  if (j.contains("clean_up_tokenization_spaces") &&
      j["clean_up_tokenization_spaces"].is_boolean()) {
    c.clean_up_tokenization_spaces = j["clean_up_tokenization_spaces"].get<bool>();
  }
  if (j.contains("chat_template") && !j["chat_template"].is_null()) {
    const Json& t = j["chat_template"];
    if (t.is_string()) {
      c.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      // Named templates: [{"name": "default", "template": "..."}, ...]; use "default".
      for (const Json& entry : t) {
        if (entry.is_object() && entry.value("name", "") == "default" &&
            entry.contains("template") && entry["template"].is_string()) {
          c.chat_template = entry["template"].get<std::string>();
        }
      }
      if (c.chat_template.empty()) {
        Fail("{}: chat_template: a list of named templates without one named \"default\"", what);
      }
    } else {
      Fail("{}: chat_template: expected a string or a list of named templates", what);
    }
  }
  return c;
}

}  // namespace dsv3
