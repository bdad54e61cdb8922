// The text commands of dsv3: tokenize, detokenize and chat-template (JSON lines on stdin and
// stdout, for tests and scripts), generate with a text prompt, the interactive chat, and the
// tokenizer part of synth.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "core/json.h"
#include "runtime/text_generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace dsv3::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Calls fn(what, object) for each line of stdin, `what` being "stdin line N". A line that is
// not one JSON object, and any error while handling it, ends the command with an error that
// names the line.
void ForEachJsonLine(const std::function<void(const std::string&, const OrderedJson&)>& fn) {
  std::string line;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    const std::string what = fmt::format("stdin line {}", n);
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      Fail("{}: empty line, expected a JSON object", what);
    }
    const OrderedJson j = ParseOrderedJson(line, what);
    if (!j.is_object()) Fail("{}: expected a JSON object, got {}", what, j.type_name());
    try {
      fn(what, j);
    } catch (const Error& e) {
      Fail("{}: {}", what, e.what());
    }
  }
}

void PrintJsonLine(const OrderedJson& j) {
  const std::string s = j.dump() + "\n";
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

void PrintText(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

bool OptionalBool(const OrderedJson& j, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) Fail("field '{}': expected true or false", key);
  return j[key].get<bool>();
}

std::string Join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("{}: cannot open", path);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

}  // namespace

// A model's tokenizer: --tokenizer if given, else the one in the model folder.
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& tokenizer, const std::string& model) {
  return Tokenizer::Load(tokenizer.empty() ? model : tokenizer);
}

void CheckVocab(const Tokenizer& tok, const Config& c) {
  if (tok.vocab_size() > c.vocab_size) {
    Fail(
        "{}: the tokenizer has ids up to {} but the model's vocab_size is {}; they do not belong "
        "together",
        tok.source(), tok.vocab_size() - 1, c.vocab_size);
  }
}

int RunTokenize(const TokenizeArgs& a) {
  const std::unique_ptr<Tokenizer> tok = Tokenizer::Load(a.tokenizer);
  if (a.jsonl) {
    ForEachJsonLine([&](const std::string& what, const OrderedJson& j) {
      if (!j.contains("text") || !j["text"].is_string()) Fail("field 'text': expected a string");
      const std::vector<int32_t> ids =
          tok->Encode(j["text"].get<std::string>(),
                      OptionalBool(j, "add_special_tokens", a.add_special_tokens));
      PrintJsonLine({{"ids", ids}});
    });
    return 0;
  }
  const std::string text = a.file.empty() ? a.text : ReadWholeFile(a.file);
  if (a.bench <= 0) {
    std::printf("%s\n", Join(tok->Encode(text, a.add_special_tokens)).c_str());
    return 0;
  }
  // Throughput: encode the whole text `bench` times, report the best and the median run.
  std::vector<double> seconds;
  size_t tokens = 0;
  for (int r = 0; r < a.bench; ++r) {
    const auto t0 = Clock::now();
    tokens = tok->Encode(text, a.add_special_tokens).size();
    seconds.push_back(Seconds(t0));
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2], mb = static_cast<double>(text.size()) / 1e6;
  OrderedJson j = {{"bytes", text.size()},
                   {"tokens", tokens},
                   {"runs", a.bench},
                   {"best_seconds", seconds.front()},
                   {"median_seconds", median},
                   {"mb_per_s_best", mb / seconds.front()},
                   {"mb_per_s_median", mb / median}};
  PrintJsonLine(j);
  return 0;
}

int RunDetokenize(const DetokenizeArgs& a) {
  const std::unique_ptr<Tokenizer> tok = Tokenizer::Load(a.tokenizer);
  if (!a.jsonl) {
    std::printf("%s\n", tok->Decode(ParseIds(a.ids), a.skip_special_tokens).c_str());
    return 0;
  }
  ForEachJsonLine([&](const std::string& what, const OrderedJson& j) {
    if (!j.contains("ids") || !j["ids"].is_array()) Fail("field 'ids': expected an array");
    std::vector<int32_t> ids;
    for (size_t i = 0; i < j["ids"].size(); ++i) {
      const OrderedJson& id = j["ids"][i];
      if (!id.is_number_integer() || id.get<int64_t>() < INT32_MIN ||
          id.get<int64_t>() > INT32_MAX) {
        Fail("ids[{}]: expected an integer token id, got {}", i, id.dump());
      }
      ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    PrintJsonLine({{"text", tok->Decode(ids, OptionalBool(j, "skip_special_tokens",
                                                          a.skip_special_tokens))}});
  });
  return 0;
}

int RunChatTemplate(const ChatTemplateArgs& a) {
  const std::unique_ptr<Tokenizer> tok = Tokenizer::Load(a.model_dir);
  const ChatTemplate tmpl(tok->config());
  ForEachJsonLine([&](const std::string& what, const OrderedJson& j) {
    if (!j.contains("messages") || !j["messages"].is_array()) {
      Fail("field 'messages': expected an array of messages");
    }
    // Every other field (tools, documents, ...) is a template variable too.
    OrderedJson extra = OrderedJson::object();
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() != "messages" && it.key() != "add_generation_prompt") extra[it.key()] = *it;
    }
    const std::string text =
        tmpl.Apply(j["messages"], OptionalBool(j, "add_generation_prompt", false), extra);
    PrintJsonLine({{"text", text}, {"ids", tok->Encode(text)}});
  });
  return 0;
}

int RunGenerateText(const GenerateArgs& a) {
  if (a.n < 0) Fail("-n must be >= 0, got {}", a.n);
  const std::unique_ptr<Tokenizer> tok = LoadTokenizer(a.tokenizer, a.model_dir);
  std::vector<int32_t> prompt;
  if (a.raw) {
    if (!a.system.empty()) Fail("--system needs the chat template; drop --raw");
    prompt = tok->Encode(a.prompt, /*add_special_tokens=*/true);
  } else {
    const ChatTemplate tmpl(tok->config());
    OrderedJson messages = OrderedJson::array();
    if (!a.system.empty()) messages.push_back({{"role", "system"}, {"content", a.system}});
    messages.push_back({{"role", "user"}, {"content", a.prompt}});
    prompt = tok->Encode(tmpl.Apply(messages, /*add_generation_prompt=*/true));
  }
  if (prompt.empty()) Fail("the prompt encodes to no tokens");
  std::unique_ptr<Model> m = LoadModel(a.model_dir, /*quiet=*/false, a.matmul, a.load);
  CheckVocab(*tok, m->config());
  Generation gen = SetUpGeneration(*m, a, prompt.size());
  Context& ctx = *gen.context;
  TextGenerateOptions o;
  o.generate.max_new_tokens = a.n;
  o.generate.sampling = a.sampling;
  o.generate.stop_at_eos = !a.ignore_eos;
  o.stop = a.stop;
  if (a.json) {
    const TextGenerateResult r = GenerateText(
        ctx, *tok, prompt, o, [](std::string_view) {}, gen.speculative.get());
    PrintGenerateJson(r.stats, ctx, r.tokens, &r.text);
    return 0;
  }
  const TextGenerateResult r = GenerateText(ctx, *tok, prompt, o, PrintText, gen.speculative.get());
  PrintText("\n");
  PrintGenerateStats(r.stats, ctx);
  return 0;
}

int RunChat(const ChatArgs& a) {
  if (a.n <= 0) Fail("-n must be positive, got {}", a.n);
  const std::unique_ptr<Tokenizer> tok = LoadTokenizer(a.tokenizer, a.model_dir);
  const ChatTemplate tmpl(tok->config());
  std::unique_ptr<Model> m = LoadModel(a.model_dir, /*quiet=*/false, a.matmul, a.load);
  const Config& c = m->config();
  CheckVocab(*tok, c);
  ContextOptions opts;
  opts.capacity = a.ctx_size > 0 ? a.ctx_size : std::min<int64_t>(c.max_position_embeddings, 8192);
  opts.kv_cache = a.kv_cache;
  opts.matmul = a.matmul;
  if (opts.capacity > c.max_position_embeddings) {
    Fail("--ctx-size {} exceeds max_position_embeddings ({})", opts.capacity,
         c.max_position_embeddings);
  }
  Context ctx(*m, opts);
  std::unique_ptr<SpeculativeDecoder> speculative;
  if (UseMtp(*m, a.no_mtp)) speculative = std::make_unique<SpeculativeDecoder>(*m, opts, a.draft);
  ChatSession session(ctx, *tok, tmpl, speculative.get());
  if (!a.system.empty()) session.AddMessage("system", a.system);
  TextGenerateOptions o;
  o.generate.max_new_tokens = a.n;
  o.generate.sampling = a.sampling;
  o.stop = a.stop;
  const bool interactive = isatty(STDIN_FILENO);
  if (interactive) {
    std::fprintf(stderr, "dsv3: chat with %s; /exit or Ctrl-D ends it\n", a.model_dir.c_str());
  }
  std::string line;
  while (true) {
    if (interactive) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    if (line.substr(first, line.find_last_not_of(" \t") + 1 - first) == "/exit") break;
    const TextGenerateResult r = session.Reply(line, o, PrintText);
    PrintText("\n");
    std::fprintf(stderr,
                 "dsv3: reply %lld tokens, %.2f tokens/s; prompt %lld new tokens in %.3f s "
                 "(%lld reused from the cache)%s\n",
                 (long long)r.stats.new_tokens, r.stats.decode_tokens_per_second(),
                 (long long)session.forwarded_tokens(), r.stats.prefill_seconds,
                 (long long)session.reused_tokens(),
                 r.stopped_by_eos      ? ""
                 : r.stopped_by_string ? "; stop string"
                                       : "; length limit");
    if (speculative) std::fprintf(stderr, "dsv3: %s\n", MtpSummary(r.stats).c_str());
  }
  return 0;
}

void AddTokenizerToSynth(const std::string& tokenizer, SynthOptions* options) {
  const std::unique_ptr<Tokenizer> tok = Tokenizer::Load(tokenizer);
  std::vector<std::string> sets = {fmt::format("vocab_size={}", tok->vocab_size())};
  if (tok->bos_id()) sets.push_back(fmt::format("bos_token_id={}", *tok->bos_id()));
  if (tok->eos_id()) sets.push_back(fmt::format("eos_token_id={}", *tok->eos_id()));
  options->set.insert(options->set.begin(), sets.begin(), sets.end());  // --set still wins
  options->copy_files.push_back(tok->source());
  const fs::path config = fs::path(tok->source()).parent_path() / "tokenizer_config.json";
  if (fs::exists(config)) options->copy_files.push_back(config.string());
  const Json json = SynthConfig(*options);
  if (json["vocab_size"].get<int64_t>() < tok->vocab_size()) {
    Fail("vocab_size {} is smaller than the {} ids of {}", json["vocab_size"].get<int64_t>(),
         tok->vocab_size(), tok->source());
  }
}

}  // namespace dsv3::cli
