#include "tokenizer/pre_tokenizer.h"

#include "core/error.h"
#include "tokenizer/json_fields.h"

namespace dsv3 {
namespace {

// GPT-2's split pattern, which ByteLevel applies first when its use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

std::unique_ptr<PreTokenizer> PreTokenizer::FromJson(const Json& j, const std::string& what) {
  auto pre = std::unique_ptr<PreTokenizer>(new PreTokenizer());
  if (ComponentType(j) == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array()) {
      Fail("{}.pretokenizers: expected an array", what);
    }
    const Json& steps = j["pretokenizers"];
    for (size_t i = 0; i < steps.size(); ++i) {
      pre->AddStep(steps[i], fmt::format("{}.pretokenizers[{}]", what, i), i + 1 == steps.size());
    }
    if (steps.empty()) Fail("{}: empty Sequence; a ByteLevel step is required", what);
  } else {
    pre->AddStep(j, what, /*last=*/true);
  }
  return pre;
}

void PreTokenizer::AddStep(const Json& step, const std::string& what, bool last) {
  const std::string type = ComponentType(step);
  if (type == "Split") {
    if (last) Fail("{}: the pre-tokenizer must end with ByteLevel (byte-level BPE)", what);
    const std::string behavior = step.value("behavior", std::string());  // HF spells it "behavior"
    if (behavior != "Isolated") {
      Fail("{}.behavior: '{}' is not supported (only Isolated)", what, behavior);
    }
    if (OptionalBool(step, "invert", false, what)) Fail("{}.invert: true is not supported", what);
    const Json& pattern = step.contains("pattern") ? step["pattern"] : Json();
    if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
      steps_.push_back(std::make_unique<Regex>(pattern["Regex"].get<std::string>(), false,
                                               what + ".pattern.Regex"));
    } else if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
      steps_.push_back(std::make_unique<Regex>(pattern["String"].get<std::string>(), true,
                                               what + ".pattern.String"));
    } else {
      Fail("{}.pattern: expected {{\"Regex\": ...}} or {{\"String\": ...}}", what);
    }
  } else if (type == "ByteLevel") {
    if (!last) Fail("{}: ByteLevel must be the last pre-tokenizer step", what);
    if (OptionalBool(step, "add_prefix_space", false, what)) {
      Fail("{}.add_prefix_space: true is not supported", what);
    }
    if (OptionalBool(step, "use_regex", true, what)) {
      steps_.push_back(std::make_unique<Regex>(kGpt2Pattern, false, what + " (GPT-2 regex)"));
    }
  } else {
    Fail("{}: pre-tokenizer type '{}' is not supported (expected Split or ByteLevel)", what,
         type.empty() ? "(none)" : type);
  }
}

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  if (!text.empty()) SplitFrom(0, text, pieces);
}

void PreTokenizer::SplitFrom(size_t step, std::string_view piece,
                             std::vector<std::string_view>* out) const {
  if (step == steps_.size()) {
    out->push_back(piece);
    return;
  }
  const Regex& re = *steps_[step];
  size_t pos = 0;     // start of the current gap
  size_t search = 0;  // where the next search starts
  size_t begin, end;
  while (search <= piece.size() && re.Find(piece, search, &begin, &end)) {
    if (begin > pos) SplitFrom(step + 1, piece.substr(pos, begin - pos), out);
    if (end > begin) {
      SplitFrom(step + 1, piece.substr(begin, end - begin), out);
      search = end;
    } else {
      // An empty match splits the gap but yields no piece; step over one character.
      if (begin >= piece.size()) {
        pos = begin;
        break;
      }
      size_t next = begin + 1;
      while (next < piece.size() && (static_cast<unsigned char>(piece[next]) & 0xC0) == 0x80) {
        ++next;
      }
      search = next;
    }
    pos = begin == end ? begin : end;
  }
  if (pos < piece.size()) SplitFrom(step + 1, piece.substr(pos), out);
}

}  // namespace dsv3
