// UTF-8 helpers for the tokenizer and the template interpreter: validation, lossy decoding with
// U+FFFD per maximal invalid subsequence (as Rust's String::from_utf8_lossy and the WHATWG
// decoder do), code point encoding and decoding, and the Unicode White_Space set.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3 {

// Byte offset of the first invalid UTF-8 sequence in `s`, or npos when `s` is valid UTF-8
// (surrogates, overlong forms and code points above U+10FFFF are invalid).
size_t FindInvalidUtf8(std::string_view s);

// Appends `bytes` to `out` as valid UTF-8, replacing each maximal invalid subsequence by U+FFFD.
// With final = false an incomplete but so far valid sequence at the end is left alone (it may
// be completed by later bytes); the return value is the number of bytes consumed, so the caller
// keeps bytes[return value..] for later. With final = true everything is consumed.
size_t AppendUtf8Lossy(std::string_view bytes, std::string* out, bool final);

// Appends the UTF-8 encoding of code point `cp` (which must be a Unicode scalar value).
void AppendUtf8(uint32_t cp, std::string* out);

// Decodes the code point starting at s[*pos] in valid UTF-8 and advances *pos past it.
uint32_t NextCodePoint(std::string_view s, size_t* pos);

// Number of code points in valid UTF-8.
size_t CountCodePoints(std::string_view s);

// Unicode White_Space: U+0009..U+000D, U+0020, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028,
// U+2029, U+202F, U+205F, U+3000. (U+180E and U+FEFF are not White_Space.)
bool IsUnicodeWhiteSpace(uint32_t cp);

// The same set as a regular-expression class body ("\t-\r\x{20}..."), for pattern rewriting.
extern const char kWhiteSpaceClassBody[];
// Its complement over all code points, also as a class body.
extern const char kNonWhiteSpaceClassBody[];

}  // namespace dsv3
