// A Jinja template interpreter for chat templates: the subset of Jinja2 that Hugging Face chat
// templates use (see docs/tokenizer.md for the exact list), with Jinja2's whitespace rules
// (trim_blocks and lstrip_blocks on, as transformers renders them) and Python value semantics.
// Anything outside the subset is an error naming the construct and its line and column;
// rendering is bounded in output size, nesting depth and steps.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/json.h"
#include "jinja/value.h"

namespace dsv3::jinja {

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Options {
  bool trim_blocks = true;              // drop the first newline after a block tag
  bool lstrip_blocks = true;            // drop spaces and tabs before a block tag on its line
  size_t max_source_bytes = 1u << 20;   // the template text
  size_t max_output_bytes = 64u << 20;  // any rendered or built string
  int max_depth = 500;                  // nesting of expressions, statements and macro calls
  int64_t max_steps = 20'000'000;       // loop iterations, calls and emitted pieces
};

class Template {
 public:
  // Parses `source`. `what` names it in errors, e.g. "tokenizer_config.json: chat_template".
  // Throws dsv3::Error on syntax errors and unsupported constructs.
  Template(std::string source, std::string what, Options options = {});
  ~Template();
  Template(const Template&) = delete;
  Template& operator=(const Template&) = delete;

  // Renders with `variables` (a JSON object) as the template's globals, beside the builtins
  // range, namespace, dict, raise_exception and strftime_now. Throws dsv3::Error on runtime
  // errors (including raise_exception) naming the line and column.
  std::string Render(const OrderedJson& variables) const;
  std::string Render(const std::vector<std::pair<std::string, Value>>& variables) const;

  const std::string& what() const { return what_; }

 private:
  std::string source_;
  std::string what_;
  Options options_;
  std::unique_ptr<Body> body_;
};

// Parses a template body; used by Template. Defined in parse.cc.
std::unique_ptr<Body> Parse(const std::string& source, const std::string& what,
                            const Options& options);
// "line L, column C" of byte `offset` of `source` (columns count characters, from 1).
std::string Position(std::string_view source, size_t offset);

}  // namespace dsv3::jinja
