#include "core/parallel.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSV3_PAUSE() _mm_pause()
#else
#define DSV3_PAUSE() ((void)0)
#endif

namespace dsv3 {
namespace {

int OnlineCpus() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

thread_local bool t_in_task = false;

// How an idle thread waits: it polls with pause instructions for a few microseconds, then keeps
// polling but yields the CPU between polls (free on an idle machine, polite on a busy one), and
// only after kYield sleeps on a condition variable. Waking a sleeping thread costs tens of
// microseconds in a VM, more than many parallel regions of a decode step take; the gaps between
// those regions are shorter than kYield.
constexpr auto kSpin = std::chrono::microseconds(20);
constexpr auto kYield = std::chrono::milliseconds(3);

// Polls `ready` until it holds (true) or kYield has passed (false).
template <typename Ready>
bool SpinUntil(Ready ready) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    if (ready()) return true;
    if ((i & 63) != 63) {
      DSV3_PAUSE();
      continue;
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > kYield) return false;
    if (waited > kSpin) std::this_thread::yield();
  }
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { Work(i); });
  }
  ~Pool() {
    stop_.store(true);
    Publish();
    for (std::thread& t : workers_) t.join();
  }
  int threads() const { return threads_; }

  void Run(int n, void (*fn)(void*, int), void* ctx) {
    fn_ = fn;
    ctx_ = ctx;
    tasks_ = n;
    remaining_.store(n - 1);
    Publish();
    t_in_task = true;
    fn(ctx, 0);
    t_in_task = false;
    if (!SpinUntil([&] { return remaining_.load() == 0; })) {
      std::unique_lock<std::mutex> lock(done_mu_);
      done_cv_.wait(lock, [&] { return remaining_.load() == 0; });
    }
  }

 private:
  // A new generation for the workers. Taking the mutex between the change and the notification
  // means a worker that found no change under the mutex is already waiting when notified.
  void Publish() {
    generation_.fetch_add(1);
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  }

  void Work(int index) {
    uint64_t seen = 0;  // the generation at construction: a Run may publish before this starts
    for (;;) {
      if (!SpinUntil([&] { return generation_.load() != seen; })) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load() != seen; });
      }
      seen = generation_.load();
      if (stop_.load()) return;
      if (index < tasks_) {
        t_in_task = true;
        fn_(ctx_, index);
        t_in_task = false;
        if (remaining_.fetch_sub(1) == 1) {
          { std::lock_guard<std::mutex> lock(done_mu_); }
          done_cv_.notify_one();
        }
      }
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_, done_mu_;
  std::condition_variable cv_, done_cv_;
  void (*fn_)(void*, int) = nullptr;
  void* ctx_ = nullptr;
  int tasks_ = 0;
};

int g_num_threads = 0;
std::unique_ptr<Pool> g_pool;

Pool& GetPool() {
  const int n = NumThreads();
  if (!g_pool || g_pool->threads() != n) {
    g_pool.reset();
    g_pool = std::make_unique<Pool>(n);
  }
  return *g_pool;
}

}  // namespace

int NumThreads() {
  if (g_num_threads <= 0) g_num_threads = OnlineCpus();
  return g_num_threads;
}

void SetNumThreads(int n) { g_num_threads = n > 0 ? n : OnlineCpus(); }

namespace internal {
void RunTasks(int n, void (*fn)(void*, int), void* ctx) { GetPool().Run(n, fn, ctx); }
bool InTask() { return t_in_task; }
}  // namespace internal

}  // namespace dsv3
