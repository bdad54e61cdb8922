#include "runtime/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/aligned.h"
#include "core/error.h"

namespace dsv3 {

double PerplexityResult::perplexity() const { return std::exp(mean_ce); }

// -log softmax(row)[target], in double.
static double CrossEntropy(const float* row, int64_t V, int32_t target) {
  float m = row[0];
  for (int64_t v = 1; v < V; ++v) m = std::max(m, row[v]);
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - m);
  return std::log(sum) + m - row[target];
}

PerplexityResult Perplexity(const Model& model, std::span<const int32_t> ids,
                            const PerplexityOptions& options,
                            const std::function<void(int64_t, double)>& on_window) {
  const Config& c = model.config();
  const int64_t ctx = options.ctx, N = static_cast<int64_t>(ids.size()), V = c.vocab_size;
  if (ctx < 1) Fail("perplexity: the context size must be at least 1, not {}", ctx);
  if (ctx + 1 > c.max_position_embeddings) {
    Fail("perplexity: a window of {} + 1 tokens exceeds the model's max_position_embeddings ({})",
         ctx, c.max_position_embeddings);
  }
  if (N < ctx + 1) {
    Fail("perplexity: the text has {} tokens, fewer than one window of {} + 1; use a smaller -c", N,
         ctx);
  }
  int64_t windows = (N - 1) / ctx;
  if (options.max_windows > 0) windows = std::min(windows, options.max_windows);
  const int64_t chunk = std::clamp<int64_t>(options.chunk, 1, ctx);

  ContextOptions co = options.context;
  co.capacity = ctx;
  co.max_batch = chunk;
  Context context(model, co);
  AlignedArray<float> logits(static_cast<size_t>(chunk * V));  // [chunk, vocab]

  PerplexityResult r;
  r.tokens = N;
  r.windows = windows;
  r.window_ce.reserve(windows);
  const auto t0 = std::chrono::steady_clock::now();
  double sum = 0, sum_sq = 0;
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* win = ids.data() + w * ctx;  // [ctx + 1]
    context.Truncate(0);
    double window_sum = 0;
    for (int64_t p = 0; p < ctx; p += chunk) {
      const int64_t n = std::min(chunk, ctx - p);
      context.Forward(std::span<const int32_t>(win + p, n),
                      {.logits = std::span<float>(logits.data(), n * V)});
      for (int64_t i = 0; i < n; ++i) {
        const double ce = CrossEntropy(logits.data() + i * V, V, win[p + i + 1]);
        window_sum += ce;
        sum_sq += ce * ce;
      }
    }
    sum += window_sum;
    r.window_ce.push_back(window_sum / ctx);
    if (on_window) on_window(w, sum / ((w + 1) * ctx));
  }
  r.scored = windows * ctx;
  r.mean_ce = sum / r.scored;
  const double var = std::max(0.0, sum_sq / r.scored - r.mean_ce * r.mean_ce);
  r.stderr_ce = r.scored > 1 ? std::sqrt(var / (r.scored - 1)) : 0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace dsv3
