// The byte-level alphabet of GPT-2-style BPE: every byte is shown as one printable code point
// (printable Latin-1 bytes as themselves, the other 68 as U+0100..U+0143), so that vocabulary
// entries and merges are strings while the model works on raw bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3 {

// The code point that stands for byte b.
uint32_t ByteLevelCodePoint(uint8_t b);

// The raw bytes a token of the byte-level alphabet stands for. Returns false (and leaves *bytes
// unspecified) when the token contains a character outside the alphabet.
bool ByteLevelToBytes(std::string_view token, std::string* bytes);

// The byte-level spelling of raw bytes.
std::string BytesToByteLevel(std::string_view bytes);

}  // namespace dsv3
