#include "tokenizer/chat_template.h"

#include "core/error.h"

namespace dsv3 {
namespace {

std::string TemplateSource(const TokenizerConfig& config) {
  if (config.chat_template.empty()) {
    Fail("{}: no chat_template (give the prompt as raw text instead)",
         config.path.empty() ? "tokenizer_config.json" : config.path);
  }
  return config.chat_template;
}

}  // namespace

ChatTemplate::ChatTemplate(const TokenizerConfig& config)
    : tokens_(OrderedJson::object()),
      template_(TemplateSource(config),
                (config.path.empty() ? "tokenizer_config.json" : config.path) + ": chat_template") {
  if (config.bos_token) tokens_["bos_token"] = *config.bos_token;
  if (config.eos_token) tokens_["eos_token"] = *config.eos_token;
  if (config.pad_token) tokens_["pad_token"] = *config.pad_token;
  if (config.unk_token) tokens_["unk_token"] = *config.unk_token;
}

std::string ChatTemplate::Apply(const OrderedJson& messages, bool add_generation_prompt,
                                const OrderedJson& extra) const {
  if (!messages.is_array()) Fail("{}: messages must be a JSON array", template_.what());
  if (!extra.is_object()) Fail("{}: extra variables must be a JSON object", template_.what());
  OrderedJson vars = tokens_;
  vars["messages"] = messages;
  vars["add_generation_prompt"] = add_generation_prompt;
  for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = it.value();
  return template_.Render(vars);
}

}  // namespace dsv3
