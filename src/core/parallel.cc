#include "core/parallel.h"

#include <unistd.h>

namespace dsv3 {
namespace {
int g_num_threads = 0;
int OnlineCpus() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}
}  // namespace

int NumThreads() {
  if (g_num_threads <= 0) g_num_threads = OnlineCpus();
  return g_num_threads;
}

void SetNumThreads(int n) { g_num_threads = n > 0 ? n : OnlineCpus(); }

}  // namespace dsv3
