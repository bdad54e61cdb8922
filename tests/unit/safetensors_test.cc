// Safetensors reading on hand-made files: every dtype, sharded folders, and each kind of damage a
// downloaded file can have (truncation, lying headers, overlaps, absurd sizes).
#include "io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"
#include "io/safetensors_writer.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

using test::TempDir;
using test::WriteFile;
using ::testing::HasSubstr;

std::string U64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A file with the given header text and `data_bytes` bytes of data.
std::string File(const std::string& header, size_t data_bytes, char fill = 'x') {
  return U64(header.size()) + header + std::string(data_bytes, fill);
}

#define EXPECT_ERROR(statement, substring)                              \
  do {                                                                  \
    try {                                                               \
      statement;                                                        \
      ADD_FAILURE() << "expected an error containing: " << (substring); \
    } catch (const Error& e) {                                          \
      EXPECT_THAT(std::string(e.what()), HasSubstr(substring));         \
    }                                                                   \
  } while (0)

TEST(Safetensors, ReadsEveryDtypeAndMetadata) {
  TempDir dir;
  // Offsets relative to the end of the header; a 2-byte tensor after a 1-byte one is misaligned,
  // which readers must handle (here: an aligned copy).
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},)"
                             R"("c":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[12,15]},)"
                             R"("d":{"dtype":"F16","shape":[1],"data_offsets":[15,17]},)"
                             R"("e":{"dtype":"I64","shape":[0],"data_offsets":[17,17]}})";
  std::string data(17, '\0');
  const float a[2] = {1.5f, -2.0f};
  std::memcpy(&data[0], a, 8);
  const uint16_t b[2] = {0x3F80, 0xC000};  // 1, -2
  std::memcpy(&data[8], b, 4);
  data[12] = 0x38;                     // 1.0
  data[13] = static_cast<char>(0xC0);  // -2.0
  data[14] = 0x7E;                     // 448
  const uint16_t d = 0x3C00;
  std::memcpy(&data[15], &d, 2);
  WriteFile(dir / "m.safetensors", U64(header.size()) + header + data);

  SafetensorsFile f(dir / "m.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  ASSERT_EQ(f.tensors().size(), 5u);
  const TensorInfo& ta = f.tensors()[0];
  EXPECT_EQ(ta.name, "a");
  EXPECT_EQ(ta.dtype, DType::kF32);
  EXPECT_EQ(reinterpret_cast<const float*>(ta.data)[1], -2.0f);
  const TensorInfo& tb = f.tensors()[1];
  EXPECT_EQ(tb.shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(BF16ToF32(reinterpret_cast<const uint16_t*>(tb.data)[1]), -2.0f);
  EXPECT_EQ(E4M3ToF32(f.tensors()[2].data[2]), 448.0f);
  const TensorInfo& td = f.tensors()[3];
  EXPECT_EQ(reinterpret_cast<uintptr_t>(td.data) % 2, 0u);  // realigned
  EXPECT_EQ(F16ToF32(*reinterpret_cast<const uint16_t*>(td.data)), 1.0f);
  EXPECT_EQ(f.tensors()[4].numel(), 0);
}

TEST(Safetensors, WriterRoundTrip) {
  TempDir dir;
  std::vector<TensorToWrite> tensors;
  tensors.push_back({"w8", DType::kF8E4M3, {3, 5}, [](uint8_t* p) {
                       for (int i = 0; i < 15; ++i) p[i] = i;
                     }});
  tensors.push_back({"w32", DType::kF32, {2}, [](uint8_t* p) {
                       const float v[2] = {3, 4};
                       std::memcpy(p, v, 8);
                     }});
  const uint64_t bytes = WriteSafetensors(dir / "x.safetensors", tensors, {{"format", "pt"}});
  EXPECT_EQ(bytes, std::filesystem::file_size(dir / "x.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "x.safetensors.tmp"));
  SafetensorsFile f(dir / "x.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "w32");  // larger elements first, for alignment
  EXPECT_EQ(reinterpret_cast<const float*>(f.tensors()[0].data)[1], 4.0f);
  EXPECT_EQ(f.tensors()[1].data[14], 14);
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* message;
};

TEST(Safetensors, RejectsDamagedFiles) {
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::vector<BadCase> cases = {
      {"empty", "", "too short for a safetensors header"},
      {"absurd header length", U64(1ull << 60) + "{}", "exceeds the limit"},
      {"header past the end", U64(1000) + "{}", "runs past the end of the file"},
      {"truncated data", File(ok, 5), "run past the end of the data"},
      {"offsets past the end",
       File(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[100,108]}})", 8),
       "run past the end"},
      {"overlap",
       File(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           8),
       "overlap"},
      {"size does not match shape",
       File(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "need 12"},
      {"unknown dtype", File(R"({"t":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}})", 2),
       "unsupported dtype 'F8_E5M2'"},
      {"negative dimension", File(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       "non-negative"},
      {"reversed offsets", File(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
       "reversed"},
      {"missing field", File(R"({"t":{"dtype":"F32","shape":[2]}})", 8), "data_offsets"},
      {"not JSON", File("{not json", 0), "invalid JSON"},
      {"not an object", File("[1,2]", 0), "not a JSON object"},
      {"deep nesting", File(std::string(100, '[') + std::string(100, ']'), 0), "nested deeper"},
      {"shape overflow",
       File(
           R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})",
           8),
       "too large"},
  };
  TempDir dir;
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir / "bad.safetensors";
    WriteFile(path, c.bytes);
    EXPECT_ERROR(SafetensorsFile f(path), c.message);
    EXPECT_ERROR(SafetensorsFile f(path), path);  // the message names the file
  }
}

TEST(Safetensors, LimitsOnUntrustedHeaders) {
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"__metadata__":{}})";
  const std::string file = File(header, 2);
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(file.data()), file.size());
  EXPECT_EQ(ParseSafetensors(bytes, "f.safetensors", 3).tensors.size(), 2u);
  EXPECT_ERROR(ParseSafetensors(bytes, "f.safetensors", 2),
               "f.safetensors: 3 header entries exceed the limit of 2");
  const std::string too_long = U64(kMaxSafetensorsHeaderBytes + 1) + "{}";
  EXPECT_ERROR(
      ParseSafetensors({reinterpret_cast<const uint8_t*>(too_long.data()), too_long.size()},
                       "g.safetensors"),
      "g.safetensors: header length 104857601 exceeds the limit of 104857600 bytes");
}

TEST(SafetensorsIndex, ParsesAndLimitsTheWeightMap) {
  const std::string text =
      R"({"metadata":{},"weight_map":{"b":"s2.safetensors","a":"s1.safetensors","c":"s1.safetensors"}})";
  const SafetensorsIndex index = ParseSafetensorsIndex(text, "i.json");
  EXPECT_EQ(index.shards, (std::vector<std::string>{"s1.safetensors", "s2.safetensors"}));
  EXPECT_EQ(index.weight_map.size(), 3u);
  EXPECT_ERROR(ParseSafetensorsIndex(text, "i.json", 2),
               "i.json: weight_map has 3 entries, more than the limit of 2");
  EXPECT_ERROR(ParseSafetensorsIndex(std::string(kMaxIndexBytes + 1, ' '), "i.json"),
               "i.json: 67108865 bytes, more than the limit of 67108864 bytes");
  EXPECT_ERROR(ParseSafetensorsIndex("[" + std::string(100, '[') + std::string(101, ']'), "i.json"),
               "i.json: JSON nested deeper than 64 levels");
  EXPECT_ERROR(ParseSafetensorsIndex(R"({"weight_map":{"a":"s\u0000.safetensors"}})", "i.json"),
               R"(i.json: weight_map["a"] = "s\u0000.safetensors" is not a file name)");
  EXPECT_ERROR(ParseSafetensorsIndex(R"({"weight_map":{"a":"dir\\s.safetensors"}})", "i.json"),
               "is not a file name in the model folder");
  EXPECT_ERROR(ParseSafetensorsIndex("[]", "i.json"), "i.json: expected a JSON object");
}

// A two-shard folder with an index.
void WriteSharded(const TempDir& dir, const std::string& index) {
  WriteFile(dir / "s1.safetensors",
            File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
  WriteFile(dir / "s2.safetensors",
            File(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
  WriteFile(dir / "model.safetensors.index.json", index);
}

TEST(Checkpoint, ShardedThroughIndex) {
  TempDir dir;
  WriteSharded(dir, R"({"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  Checkpoint ckpt(dir.path());
  EXPECT_EQ(ckpt.files().size(), 2u);
  ASSERT_NE(ckpt.Find("b"), nullptr);
  EXPECT_THAT(*ckpt.Find("b")->file, HasSubstr("s2.safetensors"));
  EXPECT_EQ(ckpt.Find("c"), nullptr);
  EXPECT_EQ(ckpt.total_bytes(), 8u);
}

TEST(Checkpoint, SingleFileAndErrors) {
  {
    TempDir dir;
    EXPECT_ERROR(Checkpoint c(dir.path()), "no model.safetensors");
    WriteFile(dir / "x.safetensors", File("{}", 0));
    Checkpoint c(dir.path());  // one file under any name is accepted
    WriteFile(dir / "y.safetensors", File("{}", 0));
    EXPECT_ERROR(Checkpoint c2(dir.path()), "no model.safetensors.index.json");
  }
  {
    TempDir dir;
    WriteSharded(dir, R"({"weight_map":{"a":"s1.safetensors","b":"missing.safetensors"}})");
    EXPECT_ERROR(Checkpoint c(dir.path()),
                 "shard 'missing.safetensors' listed in model.safetensors.index.json is missing");
  }
  {
    TempDir dir;
    WriteSharded(dir, R"({"weight_map":{"a":"s2.safetensors","b":"s2.safetensors"}})");
    EXPECT_ERROR(Checkpoint c(dir.path()),
                 "tensor 'a' is listed in model.safetensors.index.json but not stored there");
  }
  {
    TempDir dir;
    WriteSharded(dir, R"({"weight_map":{"a":"../s1.safetensors"}})");
    EXPECT_ERROR(Checkpoint c(dir.path()), "is not a file name in the model folder");
  }
  {
    TempDir dir;
    WriteSharded(dir, R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
    WriteFile(dir / "s2.safetensors",
              File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
    EXPECT_ERROR(Checkpoint c(dir.path()), "is also stored in");
  }
  {
    TempDir dir;
    WriteSharded(dir, R"({"weight_map": 3})");
    EXPECT_ERROR(Checkpoint c(dir.path()), "missing 'weight_map' object");
  }
  EXPECT_ERROR(Checkpoint c("/nonexistent/model"), "not a directory");
}

}  // namespace
}  // namespace dsv3
