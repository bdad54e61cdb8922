#include "kernels/targets.h"

#include "hwy/highway.h"
#include "kernels/amx.h"

namespace dsv3::kernels {

const char* DispatchedTargetName();  // matmul.cc

namespace {
constexpr char kAmx[] = "AMX";  // AVX3 plus AMX tiles for prompt-sized products
int64_t g_forced = 0;           // 0: best available

std::vector<int64_t> CpuTargets() {
  hwy::SetSupportedTargetsForTest(0);
  std::vector<int64_t> all = hwy::SupportedAndGeneratedTargets();
  hwy::SetSupportedTargetsForTest(g_forced);
  return all;
}
}  // namespace

std::vector<std::string> AvailableTargets() {
  std::vector<std::string> names;
  if (AmxSupported()) names.push_back(kAmx);
  for (int64_t t : CpuTargets()) names.push_back(hwy::TargetName(t));
  return names;
}

std::string ActiveTarget() {
  const std::string simd = DispatchedTargetName();
  return simd == "AVX3" && AmxEnabled() ? kAmx : simd;
}

bool ForceTarget(const std::string& name) {
  if (name.empty()) {
    g_forced = 0;
    hwy::SetSupportedTargetsForTest(0);
    SetAmxEnabled(true);
    return true;
  }
  if (name == kAmx) {
    if (!AmxSupported()) return false;
    g_forced = 0;  // AMX runs beside the best SIMD target (AVX3)
    hwy::SetSupportedTargetsForTest(0);
    SetAmxEnabled(true);
    return DispatchedTargetName() == std::string("AVX3");
  }
  for (int64_t t : CpuTargets()) {
    if (name == hwy::TargetName(t)) {
      g_forced = t;
      hwy::SetSupportedTargetsForTest(t);
      SetAmxEnabled(false);
      return true;
    }
  }
  return false;
}

}  // namespace dsv3::kernels
