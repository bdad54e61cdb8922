// The syntax tree of a parsed Jinja template: expressions and statements, each with the byte
// offset of its source for error messages. Shared by the parser and the evaluator.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "jinja/jinja.h"
#include "jinja/value.h"

namespace dsv3::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  kLiteral,   // value
  kName,      // name
  kList,      // args: items
  kTuple,     // args: items
  kDict,      // args: key0, value0, key1, value1, ...
  kGetAttr,   // args[0].name
  kGetItem,   // args[0][args[1]]
  kSlice,     // args[0][args[1]:args[2]:args[3]] (null parts allowed)
  kCall,      // args[0](args[1..], kwargs)
  kFilter,    // args[0] | name(args[1..], kwargs)
  kTest,      // args[0] is [not] name(args[1..], kwargs)
  kNot,       // not args[0]
  kNeg,       // -args[0]
  kPos,       // +args[0]
  kBinary,    // args[0] op args[1]: + - * / // % ** ~
  kAnd,       // args[0] and args[1]
  kOr,        // args[0] or args[1]
  kCompare,   // args[0] ops[0] args[1] ops[1] args[2] ... (== != < > <= >= in notin)
  kCondExpr,  // args[0] if args[1] else args[2] (args[2] may be null)
};

struct Expr {
  ExprKind kind;
  size_t offset = 0;
  Value value;       // kLiteral
  std::string name;  // kName, kGetAttr, kFilter, kTest, kBinary (the operator)
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare
  bool negated = false;          // kTest: "is not"
};

enum class NodeKind {
  kText,         // text
  kOutput,       // {{ expr }}
  kIf,           // branches (cond, body); else_body
  kFor,          // targets in expr [if filter]: body else else_body
  kSet,          // targets = expr, or target.attr = expr
  kSetBlock,     // {% set target %}body{% endset %}
  kMacro,        // name(params) body
  kFilterBlock,  // {% filter expr %}: expr is a kFilter whose args[0] is null (the body)
  kGeneration,   // {% generation %}body (transformers' assistant-mask marker: renders body)
  kBreak,
  kContinue,
};

struct Node {
  NodeKind kind;
  size_t offset = 0;
  std::string text;                  // kText; kMacro name; kSet attribute (ns.attr form)
  ExprPtr expr;                      // kOutput, kFor iterable, kSet value, kFilterBlock
  ExprPtr filter;                    // kFor "if" condition
  std::vector<std::string> targets;  // kFor, kSet, kSetBlock
  std::vector<std::pair<ExprPtr, Body>> branches;       // kIf
  std::vector<std::pair<std::string, ExprPtr>> params;  // kMacro (default may be null)
  Body body, else_body;
};

}  // namespace dsv3::jinja
