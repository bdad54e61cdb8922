// R1-style output: the text between <think> and </think> is the model's reasoning, returned to
// clients as `reasoning_content`, the rest as `content`. Works on streamed text, holding back
// only what could be the start of a tag.
#pragma once

#include <string>
#include <string_view>

namespace dsv3::server {

class ReasoningSplitter {
 public:
  // in_reasoning: the prompt already opened <think> (the chat template ends with it). Otherwise
  // reasoning starts only if the output itself begins with <think>.
  explicit ReasoningSplitter(bool in_reasoning);

  struct Parts {
    std::string reasoning, content;
  };
  Parts Push(std::string_view text);
  Parts Finish();  // the held-back text

 private:
  enum class State { kStart, kReasoning, kAfterThink, kContent };
  void Run(Parts* out);
  State state_;
  std::string held_;
};

// Whether the chat template's generation prompt ends with an open <think> (DeepSeek-R1).
bool OpensThink(std::string_view rendered_generation_prompt);

}  // namespace dsv3::server
