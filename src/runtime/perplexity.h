// Perplexity of a token stream: the text is cut into windows of ctx + 1 tokens with stride ctx
// (the last token of a window is the first of the next; a partial last window is dropped), each
// window runs from an empty cache, and every one of its ctx positions is scored by the
// cross-entropy of the next token. With ctx equal to the trainer's --seq this is exactly what
// `dsv3 train` reports as validation loss. (llama.cpp's perplexity tool also starts each window
// afresh, but scores only the second half of each; the mean here counts every position.)
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"

namespace dsv3 {

struct PerplexityOptions {
  int64_t ctx = 512;        // positions scored per window
  int64_t max_windows = 0;  // 0: every full window of the text
  int64_t chunk = 128;      // tokens per forward pass (bounds the logits buffer: [chunk, vocab])
  ContextOptions context;   // capacity and max_batch are set from ctx and chunk
};

struct PerplexityResult {
  int64_t tokens = 0;             // in the stream
  int64_t windows = 0;            // run
  int64_t scored = 0;             // positions scored (windows * ctx)
  double mean_ce = 0;             // nats per scored token
  double stderr_ce = 0;           // standard error of mean_ce over the scored tokens
  std::vector<double> window_ce;  // [windows] mean per window
  double seconds = 0;
  double perplexity() const;
};

// Fails (dsv3::Error) when the stream holds fewer than ctx + 1 tokens or ctx + 1 exceeds the
// model's max_position_embeddings. on_window (optional) sees each finished window's index and the
// running mean.
PerplexityResult Perplexity(
    const Model& model, std::span<const int32_t> ids, const PerplexityOptions& options,
    const std::function<void(int64_t window, double running_ce)>& on_window = {});

}  // namespace dsv3
