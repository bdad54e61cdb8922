#include "tokenizer/byte_level.h"

#include <array>

#include "core/unicode.h"

namespace dsv3 {
namespace {

bool IsShownAsItself(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Tables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 0x144> to_byte{};  // code point -> byte, -1 outside the alphabet
  Tables() {
    to_byte.fill(-1);
    uint32_t next = 0x100;  // bytes not shown as themselves get U+0100, U+0101, ... in order
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = IsShownAsItself(b) ? static_cast<uint32_t>(b) : next++;
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const Tables& GetTables() {
  static const Tables tables;
  return tables;
}

}  // namespace

uint32_t ByteLevelCodePoint(uint8_t b) { return GetTables().to_cp[b]; }

bool ByteLevelToBytes(std::string_view token, std::string* bytes) {
  const Tables& t = GetTables();
  bytes->clear();
  size_t pos = 0;
  while (pos < token.size()) {
    const uint32_t cp = NextCodePoint(token, &pos);
    if (cp >= t.to_byte.size() || t.to_byte[cp] < 0) return false;
    bytes->push_back(static_cast<char>(t.to_byte[cp]));
  }
  return true;
}

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  for (char c : bytes) AppendUtf8(ByteLevelCodePoint(static_cast<uint8_t>(c)), &out);
  return out;
}

}  // namespace dsv3
