// Structured output (json_schema): compiling the supported subset and refusing the rest with the
// keyword's path, validation, the byte-level recognizer (accepted and rejected bytes, the
// shortest closing proven exact state by state, against nlohmann as an independent parser), and
// the token mask over the real DeepSeek-V3 vocabulary sampling random "models" into answers that
// all validate within their token budget.
#include "runtime/json_schema.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <set>

#include "core/json.h"
#include "core/unicode.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

// The example of the task: a person with optional tags from an enum.
constexpr const char* kPerson =
    R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
        "tags":{"type":"array","items":{"enum":["a","b"]}}},"required":["name","age"]})";
// Arrays of objects inside an object, a type union, a free object, an enum of every kind.
constexpr const char* kPeople = R"({"type":"object","properties":{
    "people":{"type":"array","items":{"type":"object","properties":{
        "id":{"type":"integer"},"email":{"type":["string","null"]},"score":{"type":"number"},
        "ok":{"type":"boolean"},"tags":{"type":"array","items":{"type":"string"}}},
      "required":["id","ok"],"additionalProperties":false}},
    "meta":{"type":"object"},
    "kind":{"enum":[1,12,"x",null,true,[1,2],{"a":1}]}},
  "required":["people","kind"],"title":"annotations are ignored","description":"d"})";
// The top level may be any of several types; const; any value; nested arrays of numbers.
constexpr const char* kUnion = R"({"type":["array","integer","null","string"],
  "items":{"type":"object","properties":{"k":{"const":"v"},"n":{},
    "deep":{"type":"object","properties":{"x":{"type":"array","items":{"type":"array",
      "items":{"type":"number"}}}},"required":["x"]}},"required":["k","deep"]}})";

std::shared_ptr<const JsonSchema> Compile(std::string_view text) {
  auto r = CompileJsonSchema(Json::parse(text));
  if (const SchemaError* e = std::get_if<SchemaError>(&r)) {
    ADD_FAILURE() << text << "\n -> " << e->path << ": " << e->message;
    return nullptr;
  }
  return std::get<std::shared_ptr<const JsonSchema>>(std::move(r));
}

// ---------------------------------------------------------------------------------------------
// Compiling

TEST(CompileJsonSchema, RefusesEveryUnsupportedKeywordAtItsPath) {
  const struct {
    const char* schema;
    const char* path;
  } cases[] = {
      {R"({"type":"string","minLength":1})", "minLength"},
      {R"({"properties":{"name":{"type":"string","minLength":1}}})", "properties.name.minLength"},
      {R"({"type":"string","maxLength":3})", "maxLength"},
      {R"({"type":"string","pattern":"^a"})", "pattern"},
      {R"({"type":"string","format":"date"})", "format"},
      {R"({"type":"number","minimum":0})", "minimum"},
      {R"({"type":"number","maximum":0})", "maximum"},
      {R"({"type":"number","exclusiveMinimum":0})", "exclusiveMinimum"},
      {R"({"type":"number","multipleOf":2})", "multipleOf"},
      {R"({"type":"array","minItems":1})", "minItems"},
      {R"({"type":"array","maxItems":1})", "maxItems"},
      {R"({"type":"array","uniqueItems":true})", "uniqueItems"},
      {R"({"type":"array","prefixItems":[{}]})", "prefixItems"},
      {R"({"type":"array","contains":{}})", "contains"},
      {R"({"anyOf":[{"type":"string"}]})", "anyOf"},
      {R"({"oneOf":[{"type":"string"}]})", "oneOf"},
      {R"({"allOf":[{"type":"string"}]})", "allOf"},
      {R"({"not":{"type":"string"}})", "not"},
      {R"({"$ref":"#/$defs/a"})", "$ref"},
      {R"({"$defs":{"a":{}}})", "$defs"},
      {R"({"if":{},"then":{}})", "if"},
      {R"({"type":"object","patternProperties":{"^a":{}}})", "patternProperties"},
      {R"({"type":"object","propertyNames":{}})", "propertyNames"},
      {R"({"type":"object","minProperties":1})", "minProperties"},
      {R"({"type":"object","dependentRequired":{}})", "dependentRequired"},
      {R"({"type":"array","items":{"type":"string","format":"email"}})", "items.format"},
      {R"({"properties":{"a":{"items":{"properties":{"b":{"pattern":"x"}}}}}})",
       "properties.a.items.properties.b.pattern"},
      // Not a schema, unknown types, malformed keywords.
      {"3", ""},
      {R"("string")", ""},
      {"false", ""},
      {"null", ""},
      {R"({"properties":{"a":5}})", "properties.a"},
      {R"({"properties":{"a":false}})", "properties.a"},
      {R"({"type":"str"})", "type"},
      {R"({"type":5})", "type"},
      {R"({"type":[]})", "type"},
      {R"({"type":["string","foo"]})", "type.1"},
      {R"({"properties":[]})", "properties"},
      {R"({"properties":{"a":{}},"required":"a"})", "required"},
      {R"({"properties":{"a":{}},"required":[1]})", "required.0"},
      {R"({"properties":{"a":{}},"required":["a","b"]})", "required.1"},
      {R"({"type":"object","required":["a"]})", "required.0"},
      {R"({"additionalProperties":{"type":"string"}})", "additionalProperties"},
      {R"({"items":[{}]})", "items"},
      {R"({"items":{"type":"nope"}})", "items.type"},
      {R"({"enum":[]})", "enum"},
      {R"({"enum":3})", "enum"},
      {R"({"type":"string","enum":[1,2]})", "enum"},
      {R"({"enum":[1,2],"const":3})", "enum"},
      {R"({"type":"string","const":1})", "const"},
      {R"({"properties":{"o":{"type":"object","properties":{"a":{"type":"integer"}},
           "const":{"a":1.5}}}})",
       "properties.o.const"},
  };
  for (const auto& c : cases) {
    auto r = CompileJsonSchema(Json::parse(c.schema));
    const SchemaError* e = std::get_if<SchemaError>(&r);
    ASSERT_NE(e, nullptr) << c.schema;
    EXPECT_EQ(e->path, c.path) << c.schema << ": " << e->message;
    EXPECT_FALSE(e->message.empty()) << c.schema;
  }
  // The message names the keyword.
  auto r = CompileJsonSchema(Json::parse(R"({"type":"string","pattern":"x"})"));
  EXPECT_NE(std::get<SchemaError>(r).message.find("pattern"), std::string::npos);
}

TEST(CompileJsonSchema, AcceptsTheSubsetAndIgnoresAnnotations) {
  for (const char* s : {"{}", "true", kPerson, kPeople, kUnion,
                        R"({"title":"t","description":"d","default":1,"examples":[1],
            "$schema":"https://json-schema.org/draft/2020-12/schema","$id":"x"})",
                        R"({"type":["string","null"]})", R"({"const":{"a":[1,"x"]}})",
                        R"({"type":"object","additionalProperties":false})",
                        R"({"type":"object","properties":{},"additionalProperties":true})",
                        R"({"type":"array","items":true})"}) {
    EXPECT_TRUE(Compile(s)) << s;
  }
}

TEST(CompileJsonSchema, LimitsNestingAndProperties) {
  auto nested = [](int levels) {
    Json s = Json::object();
    for (int i = 1; i < levels; ++i) s = Json{{"type", "array"}, {"items", s}};
    return s;
  };
  EXPECT_TRUE(std::holds_alternative<std::shared_ptr<const JsonSchema>>(
      CompileJsonSchema(nested(SchemaPrefix::kMaxDepth))));
  auto r = CompileJsonSchema(nested(SchemaPrefix::kMaxDepth + 1));
  ASSERT_TRUE(std::holds_alternative<SchemaError>(r));
  std::string path;
  for (int i = 0; i < SchemaPrefix::kMaxDepth; ++i) path += i ? ".items" : "items";
  EXPECT_EQ(std::get<SchemaError>(r).path, path);

  Json props = Json::object();
  for (int i = 0; i < 65; ++i) props["p" + std::to_string(i)] = Json::object();
  r = CompileJsonSchema(Json{{"properties", props}});
  ASSERT_TRUE(std::holds_alternative<SchemaError>(r));
  EXPECT_EQ(std::get<SchemaError>(r).path, "properties");
  props.erase("p64");
  EXPECT_TRUE(std::holds_alternative<std::shared_ptr<const JsonSchema>>(
      CompileJsonSchema(Json{{"properties", props}, {"required", {"p0", "p63"}}})));
}

// ---------------------------------------------------------------------------------------------
// Validation

TEST(ValidatesJsonSchema, FollowsTheSchema) {
  const struct {
    const char* schema;
    const char* value;
    bool valid;
    const char* why;  // a part of the reason, for invalid values
  } cases[] = {
      {kPerson, R"({"name":"x","age":1})", true, ""},
      {kPerson, R"({"name":"x","age":1,"tags":["a","b"]})", true, ""},
      {kPerson, R"({"name":"x","age":1.0})", true, ""},           // JSON Schema: an integer
      {kPerson, R"({"name":"x","age":1,"other":[]})", true, ""},  // additional keys allowed
      {kPerson, R"({"name":"x"})", false, "missing required property \"age\""},
      {kPerson, R"({"name":"x","age":1.5})", false, "age: expected integer, got number"},
      {kPerson, R"({"name":1,"age":1})", false, "name: expected string"},
      {kPerson, R"({"name":"x","age":1,"tags":["a","c"]})", false, "tags.1: not one of"},
      {kPerson, R"([])", false, "expected object, got array"},
      {kPeople, R"({"people":[{"id":1,"ok":true,"email":null}],"kind":[1,2]})", true, ""},
      {kPeople, R"({"people":[],"kind":{"a":1},"meta":{"x":{"y":[]}}})", true, ""},
      {kPeople, R"({"people":[],"kind":1.0})", true, ""},  // 1.0 == 1
      {kPeople, R"({"people":[{"id":1,"ok":true,"x":0}],"kind":1})", false,
       "people.0.x: property not allowed"},
      {kPeople, R"({"people":[{"id":1}],"kind":1})", false, "people.0: missing required"},
      {kPeople, R"({"people":[],"kind":[2,1]})", false, "kind: not one of the enum values"},
      {kPeople, R"({"people":[],"kind":"y"})", false, "kind"},
      {kUnion, "null", true, ""},
      {kUnion, "-3", true, ""},
      {kUnion, R"("s")", true, ""},
      {kUnion, R"([{"k":"v","deep":{"x":[[1.5],[]]}}])", true, ""},
      {kUnion, "true", false, "expected null or array or string or integer, got boolean"},
      {kUnion, "2.5", false, "expected"},
      {kUnion, R"([{"k":"w","deep":{"x":[]}}])", false, "0.k: not the const value \"v\""},
      {kUnion, R"([{"k":"v","deep":{"x":[["1"]]}}])", false, "0.deep.x.0.0: expected number"},
      {"{}", R"({"a":[1,{"b":null}],"c":"d"})", true, ""},
      {R"({"type":"object","additionalProperties":false})", "{}", true, ""},
      {R"({"type":"object","additionalProperties":false})", R"({"a":1})", false, "a: property"},
  };
  for (const auto& c : cases) {
    auto schema = Compile(c.schema);
    ASSERT_TRUE(schema);
    std::string why;
    EXPECT_EQ(ValidatesJsonSchema(*schema, Json::parse(c.value), &why), c.valid) << c.schema << "\n"
                                                                                 << c.value << "\n"
                                                                                 << why;
    if (!c.valid) {
      EXPECT_NE(why.find(c.why), std::string::npos) << c.value << ": " << why;
    }
  }
  // Nesting: kMaxDepth containers validate, one more does not.
  auto any = Compile("{}");
  std::string deep(SchemaPrefix::kMaxDepth, '[');
  deep += std::string(SchemaPrefix::kMaxDepth, ']');
  EXPECT_TRUE(ValidatesJsonSchema(*any, Json::parse(deep)));
  EXPECT_FALSE(ValidatesJsonSchema(*any, Json::parse("[" + deep + "]")));
}

// ---------------------------------------------------------------------------------------------
// The recognizer, byte by byte

// Feeds `text`: the index of the first byte refused, or -1 when all are taken.
int64_t FirstRefused(const JsonSchema& schema, std::string_view text) {
  SchemaPrefix p(&schema);
  for (size_t i = 0; i < text.size(); ++i) {
    if (!p.Feed(static_cast<uint8_t>(text[i]))) return static_cast<int64_t>(i);
  }
  return -1;
}
bool Complete(const JsonSchema& schema, std::string_view text) {
  SchemaPrefix p(&schema);
  return p.Feed(text) && p.complete();
}

// Cases: "+text" a whole valid value; "~text" a valid prefix, not complete; otherwise '`' marks
// the first byte that must be refused (every byte before it taken).
void ExpectRecognized(const char* schema_text, std::initializer_list<std::string> cases) {
  auto schema = Compile(schema_text);
  ASSERT_TRUE(schema);
  for (const std::string& c : cases) {
    if (c[0] == '+' || c[0] == '~') {
      const std::string text = c.substr(1);
      EXPECT_EQ(FirstRefused(*schema, text), -1) << text;
      EXPECT_EQ(Complete(*schema, text), c[0] == '+') << text;
      if (c[0] == '+') {
        std::string why;
        EXPECT_TRUE(ValidatesJsonSchema(*schema, Json::parse(text), &why)) << text << ": " << why;
      }
      continue;
    }
    const size_t mark = c.find('`');
    ASSERT_NE(mark, std::string::npos) << c;
    const std::string text = c.substr(0, mark) + c.substr(mark + 1);
    EXPECT_EQ(FirstRefused(*schema, text), static_cast<int64_t>(mark)) << text;
  }
}

TEST(JsonSchemaPrefix, ObjectsWithRequiredAndOptionalProperties) {
  ExpectRecognized(kPerson,
                   {
                       R"(+{"name":"x","age":1})",
                       R"(+{"age":-12,"name":"","tags":[]})",
                       R"(+{"tags":["a","b","a"],"name":"é\u00e9\n\"\\\/","age":0})",
                       "+ \n{ \"name\" :\t\"x\" ,\r\n \"age\" : 3 , \"tags\" : [ \"b\" ] } \n",
                       R"(~{"name":"x")",
                       R"(~{"name":"x",)",
                       R"(~{"name":"x","age":12)",
                       R"({"name":"x"`})",                        // age is required
                       R"({"name":"x","age":1,"`name":"y"})",     // no key twice
                       R"({"`other":1})",                         // only the listed keys
                       R"({"nam`":1})",                           // keys are whole
                       R"({"name":"x","age":1`.5})",              // integer: no fraction
                       R"({"name":"x","age":1`e5})",              // nor exponent
                       R"({"name":"x","age":0`1})",               // no leading zeros
                       R"({"age":-`})",                           //
                       R"({"name":"x","age":`"1"})",              // wrong type
                       R"({"name":`1})",                          //
                       R"({"name":"x","age":1,"tags":["`c"]})",   // not in the enum
                       R"({"name":"x","age":1,"tags":["a",`]})",  // no trailing comma
                       R"({"name":"x","age":1,"tags":`{}})",      //
                       R"({"name":"x","age":1,`})",               // a key must follow ','
                       R"({"name":"x","age":1,"tags":[]`,})",     // no key left to write
                       R"(`[])",                                  // the top level is an object
                       R"({"name":"\`x","age":1})",               // bad escape
                       "{\"name\":\"`\x01\",\"age\":1}",          // control character
                       R"({"name":"x","age":1} `x)",              // nothing after the value
                       R"({"name":"x","age":1}`{})",              //
                       R"({`'name':1})",                          //
                   });
}

TEST(JsonSchemaPrefix, EnumValuesThatArePrefixesOfOthers) {
  ExpectRecognized(R"({"enum":[1,12,123,"a","ab",null,true,[1,2],{"k":"v"}]})",
                   {
                       "+1",
                       "+12",
                       "+123",
                       "+ 12 ",
                       R"(+"a")",
                       R"(+"ab")",
                       "+null",
                       "+true",
                       "+[1,2]",
                       R"(+{"k":"v"})",
                       R"(~"a)",
                       "~[1,",
                       "~nu",
                       "123`4",
                       "1`3",
                       "1`.0",
                       "12 `3",
                       R"("ab`c")",
                       R"("`b")",
                       "[1,` 2]",  // compact serialization only
                       R"({"k":` "v"})",
                       "`2",
                       "`false",
                       "[1,2]`]",
                   });
  auto schema = Compile(R"({"enum":[1,12,"ab"]})");
  SchemaPrefix p(schema.get());
  ASSERT_TRUE(p.Feed("1"));
  EXPECT_TRUE(p.complete());  // 1, though 12 may follow
  EXPECT_FALSE(p.done());
  EXPECT_EQ(p.ClosingBytes(), 0);
  ASSERT_TRUE(p.Feed("2"));
  EXPECT_TRUE(p.complete());
  EXPECT_TRUE(p.done());  // nothing is longer than 12
}

TEST(JsonSchemaPrefix, TypeUnionsAtTheTopAndNestedArraysOfObjects) {
  ExpectRecognized(
      kUnion, {
                  "+0",
                  "+-5",
                  "+null",
                  R"(+"s")",
                  "+[]",
                  R"(+[{"k":"v","deep":{"x":[]}}])",
                  R"(+[{"n":{"x":[1,{"y":null}],"x":2},"deep":{"x":[[1.5e-3,-0],[]]},"k":"v"}, )"
                  R"({"k":"v","n":"s","deep":{"x":[]}}])",
                  "~[",
                  "~-",
                  "+12",
                  "1`.5",
                  "`true",
                  "`{}",
                  "[{`}]",
                  R"([{"k":"`w"}])",
                  "[`1]",
                  R"([{"k":"v","deep":{"x":[]},"n":1`,"n":2}])",
                  R"([{"k":"v","deep":{"x":[[`"1"]]}}])",
                  R"([{"k":"v","deep":{`}}])",
              });
  ExpectRecognized(R"({"type":"array","items":{"type":"array","items":{"type":"object",
                      "properties":{"a":{"type":"boolean"},"b":{"type":["number","string"]}},
                      "additionalProperties":false}}})",
                   {
                       "+[]",
                       "+[[]]",
                       "+[[{}]]",
                       R"(+[[{"a":true},{"b":1.5e-3}],[{"b":"x","a":false},{"b":-0.0E+1}]])",
                       "~[[{\"a\":tru",
                       R"([[{"`c":1}]])",
                       R"([[{"a":tru`}]])",
                       R"([`{}])",
                       R"([[{"a":`1}]])",
                       R"([[{"b":`null}]])",
                       R"([[{"b":1.`}]])",
                       R"([[{"b":1e`}]])",
                       R"([[{"b":1e+`}]])",
                       R"([[{"b":`.5}]])",
                       R"([[{"b":`+1}]])",
                       R"(+[[{"b":1e307}]])",
                       R"(+[[{"b":-1.5E-99999}]])",
                       R"([[{"b":1e30`8}]])",  // numbers stay below 1e308
                       R"([[{"b":12e30`7}]])",
                   });
  // As many integer digits as that allows, not one more.
  auto number = Compile(R"({"type":"integer"})");
  const std::string digits(308, '7');
  EXPECT_TRUE(Complete(*number, digits));
  EXPECT_EQ(FirstRefused(*number, digits + "7"), 308);
  // Free objects and values: any keys (repeated too), any values.
  ExpectRecognized("{}", {
                             R"(+{"a":{"b":[1,2,{"c":null}]},"a":2})",
                             "+\"s\"",
                             "+1.5",
                             "+true",
                             "+[ ]",
                             R"({"a":1,`})",
                             R"({`1:2})",
                             "[1 `2]",
                         });
}

TEST(JsonSchemaPrefix, UnicodeStringsAndEscapes) {
  ExpectRecognized(R"({"type":"object","properties":{"s":{"type":"string"},
                      "\u00e9":{"type":"integer"}}})",
                   {
                       R"(+{"s":"\ud83d\ude00 \u00E9 😀 €"})", R"(+{"é":1})",
                       "+{\"s\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\"}",
                       R"(~{"s":"\ud83d)", R"(~{"s":"\ud83d\)", "~{\"s\":\"\xe2\x82",
                       R"({"s":"\ud83d`"})",             // a high surrogate needs its low one
                       R"({"s":"\ud83d\u`0041"})",       //
                       R"({"s":"\ud800\ud`bff"})",       //
                       R"({"s":"\ud`c00"})",             // a low surrogate alone
                       R"({"s":"\u12`g4"})",             //
                       "{\"s\":\"\xc3`(\"}",             // a lead byte without its continuation
                       "{\"s\":\"`\xc0\xaf\"}",          // overlong
                       "{\"s\":\"\xed`\xa0\x80\"}",      // a surrogate in UTF-8
                       "{\"s\":\"`\xff\"}",              //
                       "{\"s\":\"\xf4`\x90\x80\x80\"}",  // above U+10FFFF
                       R"({"`\u00e9":1})",               // keys in their compact form only
                   });
}

TEST(JsonSchemaPrefix, RefusesDeepNesting) {
  auto any = Compile("{}");
  SchemaPrefix p(any.get());
  ASSERT_TRUE(p.Feed(std::string(SchemaPrefix::kMaxDepth, '[')));
  EXPECT_FALSE(SchemaPrefix(p).Feed('['));
  EXPECT_FALSE(SchemaPrefix(p).Feed('{'));
  EXPECT_TRUE(p.Feed("0" + std::string(SchemaPrefix::kMaxDepth, ']')));
  EXPECT_TRUE(p.complete());
}

// The shortest closings by hand, each checked by appending it.
TEST(JsonSchemaPrefix, CountsTheShortestClosing) {
  const struct {
    const char* schema;
    const char* prefix;
    const char* closing;
  } cases[] = {
      {kPerson, "", R"({"age":0,"name":""})"},
      {kPerson, "{", R"("age":0,"name":""})"},
      {kPerson, R"({"na)", R"(me":"","age":0})"},
      {kPerson, R"({"t)", R"(ags":[],"age":0,"name":""})"},
      {kPerson, R"({"name":"x",)", R"("age":0})"},
      {kPerson, R"({"name":"x","age":1,)", R"("tags":[]})"},
      {kPerson, R"({"name":"x","age":1,"tags":[)", "]}"},
      {kPerson, R"({"name":"x","age":1,"tags":["a",)", R"("a"]})"},
      {kPerson, R"({"name":"x","age":-)", "0}"},
      {kPerson, R"({"name":"\ud8)", R"(00\udc00","age":0})"},
      {kPerson, R"({"name":"\ud)", R"(000","age":0})"},
      {kPerson, "{\"name\":\"\xf0\x9f", "\x80\x80\",\"age\":0}"},
      {kPeople, "", R"({"kind":1,"people":[]})"},
      {kPeople, R"({"people":[{)", R"("id":0,"ok":true}],"kind":1})"},
      {kPeople, R"({"kind":[1)", R"(,2],"people":[]})"},
      {kPeople, R"({"kind":{)", R"("a":1},"people":[]})"},
      {kPeople, R"({"people":[],"meta":{"k)", R"(":0},"kind":1})"},
      {kPeople, R"({"people":[],"meta":{"k":[{"x":)", R"(0}]},"kind":1})"},
      {kPeople, R"({"people":[],"meta":{"k":1,)", R"("":0},"kind":1})"},
      {kUnion, "", "0"},
      {kUnion, "[", "]"},
      {kUnion, "[{", R"("deep":{"x":[]},"k":"v"}])"},
      {kUnion, R"([{"deep":{"x":[[)", R"(]]},"k":"v"}])"},
      {kUnion, "nu", "ll"},
      {kUnion, "-", "0"},
      {R"({"enum":["abc","abd","abxyz"]})", "\"ab", "c\""},
      {R"({"enum":["abc","abxyz",12345,123]})", "12", "3"},
      {R"({"enum":["abc","abxyz",12345,123,"abcdefgh","ab",99]})", "\"abx", "yz\""},
      {R"({"enum":["abc","abxyz",12345,123,"abcdefgh","ab",99]})", "\"abc", "\""},
      {R"({"enum":["abc","abxyz",12345,123,"abcdefgh","ab",99]})", "", "99"},
  };
  for (const auto& c : cases) {
    auto schema = Compile(c.schema);
    ASSERT_TRUE(schema);
    SchemaPrefix p(schema.get());
    ASSERT_TRUE(p.Feed(c.prefix)) << c.prefix;
    EXPECT_EQ(p.ClosingBytes(), static_cast<int64_t>(std::string_view(c.closing).size()))
        << c.prefix;
    EXPECT_TRUE(p.Feed(c.closing)) << c.prefix << c.closing;
    EXPECT_TRUE(p.complete()) << c.prefix << c.closing;
  }
}

// ClosingBytes is exact in every state reached: it is 0 exactly when complete, no byte lowers it
// by more than one (so no completion is shorter), and some byte lowers it by one (so a completion
// of that length exists, and the recognizer has no dead ends). Random walks reach the states;
// their greedy completions must parse with nlohmann and validate.
TEST(JsonSchemaPrefix, ClosingBytesIsExactInEveryState) {
  std::mt19937_64 rng(5);
  int64_t states = 0;
  // A large enum of values of many lengths sharing prefixes.
  Json many = Json::array();
  for (int i = 0; i < 3000; ++i) {
    const int x = i * 7919 % 100003;
    many.push_back(i % 3 ? Json(std::to_string(x).substr(0, 1 + i % 5)) : Json(x));
  }
  for (const std::string& text :
       {std::string(kPerson), std::string(kPeople), std::string(kUnion), std::string("{}"),
        std::string(R"({"enum":[1,12,123,"a","ab",null,true,[1,2],{"k":"v"}]})"),
        std::string(R"({"type":"object","properties":{"s":{"type":"string"},
                        "\u00e9":{"type":["integer","boolean"]}},"required":["s"]})"),
        Json{{"type", "array"}, {"items", {{"enum", many}}}}.dump()}) {
    auto schema = Compile(text);
    ASSERT_TRUE(schema);
    // *next_byte: the first byte that brings the closing one nearer (-1: none).
    auto check = [&](const SchemaPrefix& s, const std::string& prefix, int* next_byte) {
      ++states;
      *next_byte = -1;
      const int64_t cb = s.ClosingBytes();
      ASSERT_EQ(cb == 0, s.complete()) << prefix;
      for (int b = 0; b < 256; ++b) {
        SchemaPrefix n = s;
        if (!n.Feed(static_cast<uint8_t>(b))) continue;
        const int64_t ncb = n.ClosingBytes();
        ASSERT_GE(ncb, cb - 1) << prefix << " + byte " << b;
        if (ncb == cb - 1 && *next_byte < 0) *next_byte = b;
      }
      if (cb > 0) {
        ASSERT_GE(*next_byte, 0) << prefix << ": no byte brings the closing nearer";
      }
    };
    for (int walk = 0; walk < 150; ++walk) {
      SchemaPrefix s(schema.get());
      std::string prefix;
      const int steps = static_cast<int>(rng() % 40);
      for (int i = 0; i < steps; ++i) {
        int unused;
        check(s, prefix, &unused);
        if (HasFatalFailure()) return;
        // A random byte among those taken, structural ones more often than string content.
        std::vector<uint8_t> ok;
        for (int b = 0; b < 256; ++b) {
          SchemaPrefix n = s;
          if (n.Feed(static_cast<uint8_t>(b))) ok.push_back(static_cast<uint8_t>(b));
        }
        if (ok.empty()) break;  // done: nothing but (refused) whitespace
        std::vector<uint8_t> picks;
        for (const uint8_t b : ok) {
          if (std::string_view("{}[]\",:-.eE0123456789tfn\\u ").find(static_cast<char>(b)) !=
              std::string_view::npos) {
            picks.push_back(b);
          }
        }
        if (picks.empty() || rng() % 4 == 0) picks = ok;
        const uint8_t b = picks[rng() % picks.size()];
        ASSERT_TRUE(s.Feed(b));
        prefix += static_cast<char>(b);
      }
      // Complete it greedily, checking each state on the way.
      const int64_t cb = s.ClosingBytes();
      for (int64_t i = 0; i < cb; ++i) {
        int b;
        check(s, prefix, &b);
        if (HasFatalFailure()) return;
        ASSERT_TRUE(s.Feed(static_cast<uint8_t>(b)));
        prefix += static_cast<char>(b);
      }
      ASSERT_TRUE(s.complete()) << prefix;
      Json j;
      ASSERT_NO_THROW(j = Json::parse(prefix)) << prefix;
      std::string why;
      EXPECT_TRUE(ValidatesJsonSchema(*schema, j, &why)) << prefix << ": " << why;
    }
  }
  std::printf("ClosingBytes checked in %lld states\n", static_cast<long long>(states));
}

// Every string of up to 5 bytes over a small alphabet, for scalar schemas: whole values are
// exactly what nlohmann parses and the validator accepts (for integers, what nlohmann reads as an
// integer; for enums, the compact serialization).
TEST(JsonSchemaPrefix, ScalarsAgreeWithNlohmannExhaustively) {
  const std::string alphabet = " 01-.eE\"anul2";
  const struct {
    const char* schema;
    bool integer_only;
    std::set<std::string> enums;
  } cases[] = {
      {R"({"type":["integer","null"]})", true, {}},
      {R"({"type":"number"})", false, {}},
      {R"({"type":["boolean","string"]})", false, {}},
      {R"({"enum":[1,12,"a",null,-1.5]})", false, {"1", "12", "\"a\"", "null", "-1.5"}},
  };
  for (const auto& c : cases) {
    auto schema = Compile(c.schema);
    ASSERT_TRUE(schema);
    int64_t valid = 0;
    std::vector<std::string> layer = {""};
    for (int len = 1; len <= 5; ++len) {
      std::vector<std::string> next;
      for (const std::string& s : layer) {
        for (const char a : alphabet) next.push_back(s + a);
      }
      for (const std::string& s : next) {
        bool want;
        if (!c.enums.empty()) {
          const size_t b = s.find_first_not_of(' '), e = s.find_last_not_of(' ');
          want = b != std::string::npos && c.enums.count(s.substr(b, e - b + 1)) > 0;
        } else {
          want = Json::accept(s);
          if (want) {
            const Json j = Json::parse(s);
            want = ValidatesJsonSchema(*schema, j) && !(c.integer_only && j.is_number_float());
          }
        }
        ASSERT_EQ(Complete(*schema, s), want) << c.schema << ": '" << s << "'";
        valid += want;
      }
      layer = std::move(next);
    }
    EXPECT_GT(valid, 5) << c.schema;
  }
}

// The generated language, independently: parses with nlohmann, no key twice in an object, only
// listed keys, integers without fraction or exponent, and validates.
bool StrictlyValid(const Json& schema, const Json& v) {
  if (schema.contains("type")) {
    const Json& t = schema["type"];
    auto has = [&](const char* name) {
      return t.is_string() ? t == name : std::find(t.begin(), t.end(), name) != t.end();
    };
    if (v.is_number_float() && has("integer") && !has("number")) return false;
  }
  if (v.is_object() && schema.contains("properties")) {
    for (const auto& [k, x] : v.items()) {
      if (!schema["properties"].contains(k) || !StrictlyValid(schema["properties"][k], x)) {
        return false;
      }
    }
  }
  if (v.is_array() && schema.contains("items")) {
    for (const Json& x : v) {
      if (!StrictlyValid(schema["items"], x)) return false;
    }
  }
  return true;
}
bool Oracle(const Json& schema_json, const JsonSchema& schema, const std::string& text) {
  std::vector<std::set<std::string>> keys;
  bool repeated = false;
  const Json j = Json::parse(
      text,
      [&](int, Json::parse_event_t event, Json& parsed) {
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        if (event == Json::parse_event_t::object_end) keys.pop_back();
        if (event == Json::parse_event_t::key) {
          repeated |= !keys.back().insert(parsed.get<std::string>()).second;
        }
        return true;
      },
      /*allow_exceptions=*/false);
  return !j.is_discarded() && !repeated && ValidatesJsonSchema(schema, j) &&
         StrictlyValid(schema_json, j);
}

// Valid instances mutated at random (bytes inserted, deleted, replaced, spans repeated): the
// recognizer takes a whole value exactly when the oracle above does.
TEST(JsonSchemaPrefix, MutatedInstancesAgreeWithNlohmann) {
  const struct {
    const char* schema;
    std::vector<std::string> seeds;
  } cases[] = {
      {kPerson,
       {R"({"name":"x","age":1})", R"({"age":-12,"name":"ab","tags":["a","b"]})",
        R"( { "tags" : [ ] , "name" : "" , "age" : 10 } )"}},
      {R"({"type":"array","items":{"type":"array","items":{"type":"object",
          "properties":{"a":{"type":"boolean"},"b":{"type":["number","string","null"]}},
          "required":["a"]}}})",
       {R"([[{"a":true},{"b":1.5e-3,"a":false}],[]])", R"([[{"a":false,"b":"s"}],[{"a":true}]])",
        R"([[{"b":null,"a":true}]])"}},
  };
  const std::string alphabet = "{}[]\":, \n0123456789-+.eEabxnltrufs\\";
  std::mt19937_64 rng(3);
  for (const auto& c : cases) {
    const Json schema_json = Json::parse(c.schema);
    auto schema = Compile(c.schema);
    ASSERT_TRUE(schema);
    int64_t agree_valid = 0;
    for (int trial = 0; trial < 20000; ++trial) {
      std::string s = c.seeds[rng() % c.seeds.size()];
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits; ++e) {
        const size_t at = rng() % (s.size() + 1);
        const char a = alphabet[rng() % alphabet.size()];
        switch (rng() % 4) {
          case 0:
            s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), a);
            break;
          case 1:
            if (at < s.size()) s.erase(at, 1);
            break;
          case 2:
            if (at < s.size()) s[at] = a;
            break;
          default: {  // repeat a span (repeated keys, extra elements)
            if (s.empty()) break;
            const size_t len = rng() % 12, from = rng() % s.size();
            s.insert(at, s.substr(from, len));
          }
        }
      }
      const bool want = Oracle(schema_json, *schema, s);
      ASSERT_EQ(Complete(*schema, s), want) << s;
      agree_valid += want;
    }
    EXPECT_GT(agree_valid, 100) << c.schema;
  }
}

// ---------------------------------------------------------------------------------------------
// The token mask over the DeepSeek-V3 vocabulary

class JsonSchemaMaskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = test::TestData("tokenizer/deepseek_v3");
    DSV3_REQUIRE_DATA(dir + "/tokenizer.json");
    tok_ = Tokenizer::Load(dir);
    V_ = tok_->vocab_size() + 16;  // a model vocabulary with ids the tokenizer lacks
    for (int32_t v = 0; v < tok_->vocab_size(); ++v) {
      if (tok_->IsValidId(v) && !tok_->IsSpecial(v) && tok_->TokenBytes(v).size() == 1) {
        byte_token_[static_cast<uint8_t>(tok_->TokenBytes(v)[0])] = v;
      }
    }
  }
  int32_t eos() const { return *tok_->eos_id(); }
  // Ids whose bytes are `text`, which may end inside a UTF-8 character.
  std::vector<int32_t> Ids(std::string_view text) const {
    size_t valid = text.size();
    while (valid > 0 && FindInvalidUtf8(text.substr(0, valid)) != std::string_view::npos) --valid;
    std::vector<int32_t> ids = tok_->Encode(text.substr(0, valid));
    for (const char c : text.substr(valid)) ids.push_back(byte_token_[static_cast<uint8_t>(c)]);
    return ids;
  }
  std::unique_ptr<Tokenizer> tok_;
  int64_t V_ = 0;
  int32_t byte_token_[256] = {};
};

// After each prefix the mask allows exactly the tokens that feeding every token on a copy of the
// recognizer allows and that leave room to finish, EOS exactly when complete.
TEST_F(JsonSchemaMaskTest, AllowsExactlyTheTokensThatContinue) {
  const struct {
    const char* schema;
    const char* prefix;
    int64_t left;   // tokens left after the prefix
    bool bytewise;  // the prefix as one token per byte (so that a tight budget is still one
                    // that could write the shortest value from the start)
  } cases[] = {
      {kPerson, "", 1000, false},
      {kPerson, "{", 1000, false},
      {kPerson, "{\"", 1000, false},
      {kPerson, "{\"na", 1000, false},
      {kPerson, "{\"name\"", 1000, false},
      {kPerson, "{\"name\":", 1000, false},
      {kPerson, "{\"name\": \"ab", 1000, false},
      {kPerson, "{\"name\": \"ab", 12, true},  // room for plain tokens, then ","age":0}
      {kPerson, "{\"name\": \"ab", 11, true},  // only for tokens that end the string
      {kPerson, "{\"name\": \"a\xc3", 1000, false},
      {kPerson, "{\"name\": \"a\\u00", 1000, false},
      {kPerson, "{\"name\":\"x\",\"age\":12", 1000, false},
      {kPerson, "{\"name\":\"x\",\"age\":12", 3, true},
      {kPerson, "{\"name\":\"x\",\"age\":1,\"tags\":[\"", 1000, false},
      {kPerson, "{\"name\":\"x\",\"age\":1,\"tags\":[\"a\"", 1000, false},
      {kPerson, "{\"name\":\"x\",\"age\":1}", 1000, false},
      {kPeople, "{\"kind\":", 1000, false},
      {kPeople, "{\"kind\":1", 1000, false},
      {kPeople, "{\"people\":[{\"id\":1,\"ok\":true,\"email\":", 1000, false},
      {kPeople, "{\"people\":[],\"kind\":1,\"meta\":{\"x", 1000, false},
      {kUnion, "", 1000, false},
      {kUnion, "12", 1000, false},
      {kUnion, "12", 2, true},
      {kUnion, "[{\"deep\":{\"x\":[[1", 1000, false},
      {"{}", "", 1000, false},
  };
  std::vector<float> logits(static_cast<size_t>(V_));
  for (const auto& c : cases) {
    auto schema = Compile(c.schema);
    ASSERT_TRUE(schema);
    std::vector<int32_t> ids;
    if (c.bytewise) {
      for (const char b : std::string_view(c.prefix)) {
        ids.push_back(byte_token_[static_cast<uint8_t>(b)]);
      }
    } else {
      ids = Ids(c.prefix);
    }
    const int64_t budget = static_cast<int64_t>(ids.size()) + c.left;
    JsonSchemaMask mask(*tok_, V_, {eos()}, budget, schema);
    for (const int32_t id : ids) mask.Accept(id);
    SchemaPrefix state(schema.get());
    const bool budgeted = budget >= state.ClosingBytes() + 1;
    ASSERT_TRUE(state.Feed(c.prefix)) << c.prefix;
    ASSERT_TRUE(state == mask.state()) << c.prefix;
    std::fill(logits.begin(), logits.end(), 0.0f);
    mask.Apply(logits.data());
    int64_t allowed = 0;
    for (int64_t v = 0; v < V_; ++v) {
      const int32_t id = static_cast<int32_t>(v);
      bool want;
      if (id == eos()) {
        want = state.complete();
      } else {
        SchemaPrefix next = state;
        want = tok_->IsValidId(id) && !tok_->IsSpecial(id) && !state.done() &&
               !tok_->TokenBytes(id).empty() && next.Feed(tok_->TokenBytes(id)) &&
               (!budgeted || next.ClosingBytes() + 1 <= c.left - 1);
      }
      ASSERT_EQ(std::isfinite(logits[v]), want)
          << c.prefix << " (" << c.left << " left): token " << v << " '"
          << (v < tok_->vocab_size() ? tok_->TokenBytes(id) : "") << "'";
      allowed += want;
    }
    EXPECT_GT(allowed, 0) << c.prefix;
    if (c.left < 100) {
      EXPECT_TRUE(budgeted) << c.prefix;
    }
  }
}

// Random "models" decoding under the mask: every answer is one value of its schema followed by
// EOS, within its token budget. Most answers pick a random allowed token each step (one with
// JSON punctuation half of the time, so that strings end and structures vary, else mostly one
// that is not all whitespace); ten per schema go through the Sampler with random logits. Prints
// the mask's cost per token.
TEST_F(JsonSchemaMaskTest, HundredSampledAnswersPerSchemaValidate) {
  // [vocab] 2: has JSON punctuation (or is EOS), 1: other text not all whitespace, 0: the rest.
  std::vector<uint8_t> kind(static_cast<size_t>(V_), 0);
  for (int32_t v = 0; v < tok_->vocab_size(); ++v) {
    if (!tok_->IsValidId(v)) continue;
    const std::string_view b = tok_->TokenBytes(v);
    kind[v] = b.find_first_of("{}[]\",:") != std::string_view::npos || v == eos() ? 2
              : b.find_first_not_of(" \t\r\n") != std::string_view::npos          ? 1
                                                                                  : 0;
  }
  std::vector<float> logits(static_cast<size_t>(V_));
  std::vector<int32_t> pools[3];  // the allowed tokens of kind >= 2, >= 1, >= 0
  // One vocabulary for every mask, as a server keeps it.
  const auto t0 = std::chrono::steady_clock::now();
  auto vocabulary = std::make_shared<const SchemaVocabulary>(*tok_, V_, std::vector{eos()});
  std::printf("SchemaVocabulary built in %.1f ms\n",
              1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  for (const char* text : {kPerson, kPeople, kUnion}) {
    auto schema = Compile(text);
    ASSERT_TRUE(schema);
    const int64_t shortest = SchemaPrefix(schema.get()).ClosingBytes();
    std::mt19937_64 rng(11);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    double mask_seconds = 0;
    int64_t steps = 0, bytes = 0;
    std::set<std::string> distinct;
    for (int trial = 0; trial < 100; ++trial) {
      // Mostly 200 tokens; every fourth answer only just has room for the shortest value.
      const int64_t budget = trial % 4 == 3 ? shortest + 1 + trial % 5 : 200;
      JsonSchemaMask mask(vocabulary, budget, schema);
      const bool sampler_made = trial < 10;
      SamplingParams sp;
      sp.temperature = 1.0f;
      sp.seed = static_cast<uint64_t>(trial);
      Sampler sampler(sp, V_);
      if (sampler_made) {
        for (float& l : logits) l = normal(rng);  // this answer's "model"
        sampler.set_mask(&mask);
      }
      std::string answer;
      bool ended = false;
      for (int64_t i = 0; i < budget && !ended; ++i) {
        int32_t id;
        if (sampler_made) {
          id = sampler.Sample(logits.data());
        } else {
          std::fill(logits.begin(), logits.end(), 0.0f);
          const auto t0 = std::chrono::steady_clock::now();
          mask.Apply(logits.data());
          mask_seconds +=
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          ++steps;
          for (auto& pool : pools) pool.clear();
          for (int32_t v = 0; v < V_; ++v) {
            if (!std::isfinite(logits[v])) continue;
            for (int k = 0; k <= kind[v]; ++k) pools[2 - k].push_back(v);
          }
          ASSERT_FALSE(pools[2].empty());
          const uint64_t r = rng() % 10;
          int p = r < 5 ? 0 : r < 9 ? 1 : 2;
          while (pools[p].empty()) ++p;
          id = pools[p][rng() % pools[p].size()];
          mask.Accept(id);
        }
        if (id == eos()) {
          ended = true;
        } else {
          ASSERT_FALSE(tok_->IsSpecial(id)) << answer;
          answer += tok_->TokenBytes(id);
        }
      }
      ASSERT_TRUE(ended) << "budget " << budget << ": " << answer;
      Json j;
      ASSERT_NO_THROW(j = Json::parse(answer)) << answer;
      std::string why;
      EXPECT_TRUE(ValidatesJsonSchema(*schema, j, &why)) << answer << "\n" << why;
      EXPECT_TRUE(Complete(*schema, answer)) << answer;
      bytes += static_cast<int64_t>(answer.size());
      distinct.insert(answer);
      if (trial % 25 == 10) std::printf("  e.g. %.300s\n", answer.c_str());
    }
    EXPECT_GT(distinct.size(), 50u);  // the answers do differ
    std::printf(
        "json_schema mask: %.3f ms per token (Apply over vocab %lld, %lld steps), %.0f "
        "bytes per answer, schema %.50s...\n",
        1e3 * mask_seconds / static_cast<double>(steps), static_cast<long long>(V_),
        static_cast<long long>(steps), static_cast<double>(bytes) / 100, text);
  }
}

TEST_F(JsonSchemaMaskTest, ABudgetOfTheShortestValueWritesIt) {
  auto schema = Compile(kPerson);
  ASSERT_TRUE(schema);
  const int64_t shortest = SchemaPrefix(schema.get()).ClosingBytes();
  ASSERT_EQ(shortest, 19);  // {"age":0,"name":""}
  JsonSchemaMask mask(*tok_, V_, {eos()}, shortest + 1, schema);
  std::vector<float> logits(static_cast<size_t>(V_));
  std::string answer;
  for (int64_t i = 0; i <= shortest; ++i) {
    std::fill(logits.begin(), logits.end(), 0.0f);
    mask.Apply(logits.data());
    const int32_t id = Argmax(logits.data(), V_);
    mask.Accept(id);
    if (id == eos()) break;
    answer += tok_->TokenBytes(id);
  }
  std::string why;
  EXPECT_TRUE(ValidatesJsonSchema(*schema, Json::parse(answer), &why)) << answer << ": " << why;
  EXPECT_TRUE(mask.state().done());
}

}  // namespace
}  // namespace dsv3
