// Google Benchmark microbenchmarks of the kernel families: weight-times-activation products per
// dtype (decode: bytes/s; prefill: FLOP/s), attention blocks, vector ops. Threads: --threads=N
// (dsv3's pool; default all CPUs). SIMD target: DSV3_BENCH_SIMD=AVX2 etc. --matmul=bf16: BF16
// activations in the AMX products (as `dsv3 --matmul bf16`).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/amx.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/quant_gemm.h"
#include "kernels/stream.h"
#include "kernels/targets.h"

namespace dsv3::kernels {
// --matmul=bf16: the precision of the blocked products benchmarked below (a benchmark setting,
// passed to each call).
MatMulPrecision g_matmul = MatMulPrecision::kF32;
namespace {

struct Matrix {
  WeightMatrix w;
  std::vector<uint8_t> data;
  std::vector<float> scale;
};

Matrix MakeMatrix(DType dtype, int64_t rows, int64_t cols) {
  Matrix m;
  // A cheap generator: matrices here reach a GiB, and values do not change speed.
  uint32_t state = 12345;
  m.data.resize(rows * cols * DTypeSize(dtype));
  for (int64_t i = 0; i < rows * cols; ++i) {
    state = state * 1664525u + 1013904223u;
    const float v = static_cast<float>(static_cast<int32_t>(state >> 8) - (1 << 23)) / (1 << 23);
    switch (dtype) {
      case DType::kF32:
        std::memcpy(&m.data[4 * i], &v, 4);
        break;
      case DType::kBF16:
        reinterpret_cast<uint16_t*>(m.data.data())[i] = F32ToBF16(v);
        break;
      case DType::kF16:
        reinterpret_cast<uint16_t*>(m.data.data())[i] = F32ToF16(v);
        break;
      case DType::kF8E4M3:
        m.data[i] = F32ToE4M3(v * 50);
        break;
      default:
        break;
    }
  }
  m.w = {dtype, rows, cols, m.data.data(), nullptr, 0, 0, 0};
  if (dtype == DType::kF8E4M3) {
    m.scale.assign(((rows + 127) / 128) * ((cols + 127) / 128), 0.02f);
    m.w.scale = m.scale.data();
    m.w.block_rows = m.w.block_cols = 128;
    m.w.scale_cols = (cols + 127) / 128;
  }
  return m;
}

std::vector<float> Activations(int64_t n) {
  std::vector<float> x(n);
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0, 1);
  for (float& v : x) v = normal(rng);
  return x;
}

// Decode: one token against a matrix much larger than the caches. Reports weight bytes/s.
void BM_MatVec(benchmark::State& state, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const Matrix m = MakeMatrix(dtype, rows, cols);
  const std::vector<float> x = Activations(cols);
  std::vector<float> y(rows);
  for (auto _ : state) {
    MatMul(m.w, x.data(), cols, 1, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * m.w.bytes());
  const bool lookup = Fp8LookupEnabled() && dtype == DType::kF8E4M3 &&
                      (ActiveTarget() == "AVX3" || ActiveTarget() == "AMX");
  state.SetLabel(ActiveTarget() + (lookup ? "+vpermi2b" : ""));
}

// The STREAM-style read the decode products are measured against: a 1 GiB float32 sum split
// over the threads as MatMul splits rows (bytes/s).
void BM_StreamRead(benchmark::State& state) {
  const AlignedArray<float> buffer = ReadBuffer((size_t{1} << 30) / sizeof(float));
  for (auto _ : state) benchmark::DoNotOptimize(ReadPass(buffer));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * buffer.size() * sizeof(float)));
}

// Prefill: T tokens, FLOP/s as items (2 per multiply-add).
void BM_MatMul(benchmark::State& state, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1), T = state.range(2);
  const Matrix m = MakeMatrix(dtype, rows, cols);
  const std::vector<float> x = Activations(T * cols);
  std::vector<float> y(T * rows);
  for (auto _ : state) {
    MatMul(m.w, x.data(), cols, T, y.data(), rows, {.precision = g_matmul});
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * 2 * rows * cols * T);
  state.SetLabel(ActiveTarget());
}

// Absorbed MLA decode shape: H heads against S cached rows of C+R floats (scores, online softmax,
// weighted latents). FLOP/s as items.
void BM_AttentionBlock(benchmark::State& state) {
  const int64_t H = state.range(0), S = state.range(1), C = 512, R = 64, CR = C + R, B = 256;
  const std::vector<float> q = Activations(H * CR), cache = Activations(S * CR);
  std::vector<float> scores(H * B), o(H * C), m(H), l(H);
  for (auto _ : state) {
    std::fill(m.begin(), m.end(), -INFINITY);
    std::fill(l.begin(), l.end(), 0.0f);
    std::fill(o.begin(), o.end(), 0.0f);
    for (int64_t s0 = 0; s0 < S; s0 += B) {
      const int64_t nb = std::min(B, S - s0);
      QKScores(q.data(), CR, H, cache.data() + s0 * CR, CR, nb, CR, 0.1f, scores.data());
      for (int64_t h = 0; h < H; ++h) {
        const float c = OnlineSoftmax(scores.data() + h * nb, nb, m[h], l[h]);
        Scale(c, o.data() + h * C, C);
      }
      PVAccumulate(scores.data(), H, nb, cache.data() + s0 * CR, CR, C, o.data(), C);
    }
    benchmark::DoNotOptimize(o.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * H * S * (CR + C) * 2);
}

// The same over a BF16 cache with the AMX tile kernel (one thread; skipped without AMX); the third
// argument 1: MatMulPrecision::kBF16 (one BF16 part of queries and probabilities instead of two).
void BM_AttentionBlockAmxBf16(benchmark::State& state) {
  const int64_t H = state.range(0), S = state.range(1), C = 512, R = 64, CR = C + R;
  const int64_t Hp = (H + 15) / 16 * 16;
  if (!AmxSupported()) {
    state.SkipWithError("no AMX on this CPU");
    return;
  }
  const MatMulPrecision precision = state.range(2) ? MatMulPrecision::kBF16 : MatMulPrecision::kF32;
  const std::vector<float> q = Activations(H * CR), rows = Activations(S * CR);
  std::vector<uint16_t> cache(S * CR), tiles(AmxLatentQueryElements(H, CR));
  for (size_t i = 0; i < cache.size(); ++i) cache[i] = F32ToBF16(rows[i]);
  AlignedArray<uint8_t> scratch(static_cast<size_t>(AmxLatentScratchBytes(CR, C)));
  std::vector<float> o(Hp * (C + 16)), m(Hp), l(Hp);
  for (auto _ : state) {
    std::fill(m.begin(), m.end(), -INFINITY);
    std::fill(l.begin(), l.end(), 0.0f);
    std::fill(o.begin(), o.end(), 0.0f);
    AmxPrepareLatentQueries(q.data(), H, CR, tiles.data());
    AmxLatentAttention(tiles.data(), H, CR, C, cache.data(), S, 0.1f, m.data(), l.data(), o.data(),
                       C + 16, scratch.data(), precision);
    benchmark::DoNotOptimize(o.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * H * S * (CR + C) * 2);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * S * CR * 2);
}

// The three float32 products of a linear layer y = x W^T in training, x [T, in], W [out, in]
// (Sgemm, gemm.h): product 0 forward y = x W^T, 1 data gradient dx = dy W, 2 weight gradient
// dW += dy^T x (a reduction over the T tokens). Reports GFLOP/s (2 per multiply-add).
void BM_Sgemm(benchmark::State& state) {
  const int64_t T = state.range(0), in = state.range(1), out = state.range(2);
  const int64_t product = state.range(3);
  const std::vector<float> x = Activations(T * in), w = Activations(out * in);
  const std::vector<float> dy = Activations(T * out);
  std::vector<float> y(T * out), dx(T * in), dw(out * in);
  for (auto _ : state) {
    switch (product) {
      case 0:
        Sgemm(Trans::kN, Trans::kT, T, out, in, x.data(), in, w.data(), in, 0, y.data(), out);
        break;
      case 1:
        Sgemm(Trans::kN, Trans::kN, T, in, out, dy.data(), out, w.data(), in, 0, dx.data(), in);
        break;
      default:
        Sgemm(Trans::kT, Trans::kN, out, in, T, dy.data(), out, x.data(), in, 1, dw.data(), in);
        break;
    }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * static_cast<double>(T * in * out),
                                                 benchmark::Counter::kIsIterationInvariantRate);
  const char* names[] = {"fwd", "dgrad", "wgrad"};
  state.SetLabel(std::string(names[std::min<int64_t>(product, 2)]) + " " + ActiveTarget());
}

// The forward product of an FP8 linear layer y = x W^T (Bf16Gemm, quant_gemm.h) over T tokens,
// x [T, K] and W [N, K] as BF16 bits: {T, K, N, scaled (1x128 / per-row 128-block scales, else
// none), dot (vdpbf16ps allowed where the CPU has it)}. Reports GFLOP/s (2 per multiply-add).
void BM_Bf16Gemm(benchmark::State& state) {
  const int64_t T = state.range(0), K = state.range(1), N = state.range(2);
  const bool scaled = state.range(3) != 0, dot = state.range(4) != 0;
  const std::vector<float> xf = Activations(T * K), wf = Activations(N * K);
  std::vector<uint16_t> x(T * K), w(N * K);
  for (size_t i = 0; i < x.size(); ++i) x[i] = F32ToBF16(xf[i]);
  for (size_t i = 0; i < w.size(); ++i) w[i] = F32ToBF16(wf[i]);
  const std::vector<float> sx(T * (K / 128), 0.5f), sw(N * (K / 128), 0.25f);
  std::vector<float> y(T * N);
  const bool was = Bf16DotEnabled();
  SetBf16DotEnabled(dot);
  for (auto _ : state) {
    Bf16Gemm(T, N, K, x.data(), K, scaled ? sx.data() : nullptr, K / 128, w.data(), K,
             scaled ? sw.data() : nullptr, K / 128, 0.0f, y.data(), N);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * static_cast<double>(T * K * N),
                                                 benchmark::Counter::kIsIterationInvariantRate);
  const bool vdp = Bf16DotEnabled() && (ActiveTarget() == "AVX3" || ActiveTarget() == "AMX");
  state.SetLabel(ActiveTarget() + (vdp ? "+vdpbf16ps" : "") + (scaled ? " scaled" : ""));
  SetBf16DotEnabled(was);
}

// 1x128-tile FP8 quantization of activations [rows, cols]: bytes/s of float32 read plus codes
// written.
void BM_QuantizeE4M3Tiles(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const std::vector<float> x = Activations(rows * cols);
  std::vector<uint16_t> q(rows * cols);
  std::vector<float> scales(rows * (cols / 128));
  for (auto _ : state) {
    QuantizeE4M3Tiles(x.data(), rows, cols, cols, false, q.data(), cols, scales.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * rows * cols * 6);
  state.SetLabel(ActiveTarget());
}

void BM_RmsNorm(benchmark::State& state) {
  const int64_t n = state.range(0);
  const std::vector<float> x = Activations(n), w = Activations(n);
  std::vector<float> y(n);
  for (auto _ : state) {
    RmsNorm(x.data(), w.data(), 1e-6f, n, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * 12);
}

void BM_Softmax(benchmark::State& state) {
  const int64_t n = state.range(0);
  std::vector<float> x = Activations(n);
  for (auto _ : state) {
    Softmax(x.data(), n);
    benchmark::DoNotOptimize(x.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
}

// Decode from memory: 1 GiB matrices, beyond any cache (this machine type has a 300 MiB L3);
// and from cache: 8 MiB (a DeepSeek-V2-Lite expert is 1408 x 2048).
BENCHMARK(BM_StreamRead)->UseRealTime();
BENCHMARK_CAPTURE(BM_MatVec, fp8_dram, DType::kF8E4M3)->Args({524288, 2048})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatVec, bf16_dram, DType::kBF16)->Args({262144, 2048})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatVec, f32_dram, DType::kF32)->Args({131072, 2048})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatVec, fp8_cache, DType::kF8E4M3)->Args({4096, 2048})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatVec, bf16_cache, DType::kBF16)->Args({2048, 2048})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatVec, fp8_l2, DType::kF8E4M3)->Args({256, 2048})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatVec, bf16_l2, DType::kBF16)->Args({128, 2048})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatMul, fp8_T64, DType::kF8E4M3)->Args({2048, 2048, 64})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatMul, fp8_T512, DType::kF8E4M3)->Args({2048, 2048, 512})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatMul, fp8_kva_T512, DType::kF8E4M3)->Args({576, 2048, 512})->UseRealTime();
// A DeepSeek-V2-Lite expert's gate projection with the ~48 tokens a 512-token prompt routes to it.
BENCHMARK_CAPTURE(BM_MatMul, fp8_expert_T48, DType::kF8E4M3)->Args({1408, 2048, 48})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatMul, fp8_dram_T48, DType::kF8E4M3)->Args({131072, 2048, 48})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatMul, bf16_T64, DType::kBF16)->Args({2048, 2048, 64})->UseRealTime();
BENCHMARK_CAPTURE(BM_MatMul, fp8_T4, DType::kF8E4M3)->Args({16384, 2048, 4})->UseRealTime();
BENCHMARK(BM_AttentionBlock)->Args({16, 8192})->Args({128, 4096})->UseRealTime();
BENCHMARK(BM_AttentionBlockAmxBf16)
    ->Args({16, 8192, 0})
    ->Args({16, 8192, 1})
    ->Args({128, 4096, 0})
    ->Args({128, 4096, 1})
    ->UseRealTime();
// A small and a DeepSeek-V2-Lite expert-sized linear layer over 2048 tokens: {T, in, out, product}.
BENCHMARK(BM_Sgemm)
    ->ArgsProduct({{2048}, {256}, {512}, {0, 1, 2}})
    ->ArgsProduct({{2048}, {2048}, {1408}, {0, 1, 2}})
    ->UseRealTime();
// FP8 linear layers over 2048 tokens (as BM_Sgemm): {T, K, N, scaled, dot}.
BENCHMARK(BM_Bf16Gemm)
    ->ArgsProduct({{2048}, {256}, {512}, {0, 1}, {1, 0}})
    ->ArgsProduct({{2048}, {2048}, {1408}, {0, 1}, {1, 0}})
    ->UseRealTime();
BENCHMARK(BM_QuantizeE4M3Tiles)->Args({2048, 2048})->UseRealTime();
BENCHMARK(BM_RmsNorm)->Arg(7168);
BENCHMARK(BM_Softmax)->Arg(8192);

}  // namespace
}  // namespace dsv3::kernels

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]).rfind("--threads=", 0) == 0)
      dsv3::SetNumThreads(std::atoi(argv[i] + 10));
    // The float16 route of FP8 decode on AVX3 instead of the byte tables (for comparison).
    if (std::string(argv[i]) == "--no-fp8-lookup") dsv3::kernels::SetFp8LookupEnabled(false);
    if (std::string(argv[i]) == "--matmul=bf16")
      dsv3::kernels::g_matmul = dsv3::kernels::MatMulPrecision::kBF16;
  }
  if (const char* simd = std::getenv("DSV3_BENCH_SIMD")) dsv3::kernels::ForceTarget(simd);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
