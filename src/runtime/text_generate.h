// Text-level generation on top of the token loop: generated tokens are streamed as text through
// the incremental detokenizer, generation stops at the tokenizer's EOS or at stop strings (which
// are not printed), and a chat session keeps a conversation in the latent KV cache, forwarding
// only the tokens of each new turn.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "model/model.h"
#include "runtime/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {

// Holds back text that could be the beginning of a stop string until it is known not to be.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Adds generated text; returns what can be shown now. Once a stop string appears, *stopped
  // becomes true and the text before it is returned (the stop string and anything after it
  // are dropped).
  std::string Push(std::string_view text, bool* stopped);
  // The held-back text, at the end of generation.
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

struct TextGenerateOptions {
  GenerateOptions generate;
  std::vector<std::string> stop;  // stop strings (empty ones are ignored)
  bool skip_special_tokens = true;
};

struct TextGenerateResult {
  std::vector<int32_t> tokens;  // generated ids, the EOS included when it ended generation
  std::string text;             // the shown text (up to a stop string)
  bool stopped_by_eos = false;
  bool stopped_by_string = false;
  GenerateStats stats;
};

// Turns generated tokens into shown text as GenerateText does: an EOS token ends generation
// (with stop_at_eos), the incremental detokenizer makes text of the rest, and stop strings are
// held back and cut. Used by GenerateText and by the server's scheduler.
class TokenTextStream {
 public:
  TokenTextStream(const Tokenizer& tokenizer, const std::vector<int64_t>& eos_ids,
                  const TextGenerateOptions& options);
  // Takes the next generated token; appends the text that can be shown now to *text. Returns
  // false when generation must stop (EOS or a stop string).
  bool Push(int32_t token, std::string* text);
  // At the end of generation: the text still held back (nothing after a stop string).
  std::string Finish();
  bool stopped_by_eos() const { return stopped_by_eos_; }
  bool stopped_by_string() const { return stopped_by_string_; }

 private:
  const Tokenizer& tokenizer_;
  const std::vector<int64_t>& eos_;
  bool stop_at_eos_;
  StreamDecoder decoder_;
  StopMatcher stop_;
  bool stopped_by_eos_ = false, stopped_by_string_ = false;
};

// Generates after `prompt` (appended to ctx) and calls on_text with each piece of text as soon
// as it is complete.
// `speculative`: optional MTP speculative decoding (see Generate).
TextGenerateResult GenerateText(Context& ctx, const Tokenizer& tokenizer,
                                std::span<const int32_t> prompt, const TextGenerateOptions& options,
                                const std::function<void(std::string_view)>& on_text,
                                SpeculativeDecoder* speculative = nullptr);

// A multi-turn conversation rendered by the model's chat template. Each turn renders the whole
// conversation, keeps the longest prefix of its tokens that the cache already holds and forwards
// only the rest.
class ChatSession {
 public:
  // `speculative`, if given, decodes with MTP drafts and follows the cache across turns.
  ChatSession(Context& ctx, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
              SpeculativeDecoder* speculative = nullptr);

  void AddMessage(const std::string& role, const std::string& content);
  // Adds the user message, generates the assistant reply (streamed to on_text) and adds it to
  // the conversation. max_new_tokens is cut to what the context has room for; a conversation
  // that no longer fits is an error.
  TextGenerateResult Reply(const std::string& user, const TextGenerateOptions& options,
                           const std::function<void(std::string_view)>& on_text);

  int64_t reused_tokens() const { return reused_; }        // cached tokens kept by the last turn
  int64_t forwarded_tokens() const { return forwarded_; }  // prompt tokens it had to run
  const OrderedJson& messages() const { return messages_; }

 private:
  Context& ctx_;
  SpeculativeDecoder* speculative_;
  const Tokenizer& tokenizer_;
  const ChatTemplate& template_;
  OrderedJson messages_ = OrderedJson::array();
  std::vector<int32_t> cached_;  // the tokens in ctx_'s cache, in order
  int64_t reused_ = 0, forwarded_ = 0;
};

}  // namespace dsv3
