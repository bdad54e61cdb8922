// Which SIMD targets this build carries, which one runs, and forcing one (tests, `--simd`).
#pragma once

#include <string>
#include <vector>

namespace dsv3::kernels {

// Compiled targets that this CPU supports, best first ("AMX", "AVX3", "AVX2", "SSE4", ...,
// "SCALAR"). "AMX" is AVX3 plus AMX tiles for the prompt-sized products (see amx.h); forcing
// "AVX3" or lower turns the tiles off.
std::vector<std::string> AvailableTargets();
// The target the dispatcher currently uses.
std::string ActiveTarget();
// Restricts dispatch to the named target; returns false if it is not available. "" restores the
// default (best available).
bool ForceTarget(const std::string& name);

}  // namespace dsv3::kernels
