// The co-design analysis of one or several configs as JSON (for machines) and as readable text
// that shows the working: one config in detail, several side by side (the paper's Tables 1 and 2).
// Also the reports of the tpot, mtp and network analyses.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "analysis/arch.h"
#include "analysis/comm.h"
#include "analysis/compute.h"
#include "analysis/memory.h"
#include "analysis/network.h"
#include "core/json.h"

namespace dsv3::analysis {

struct AnalyzeOptions {
  int64_t seq_len = 4096;                // training sequence length
  int64_t context = 4096;                // decode context length
  int64_t batch = 1;                     // sequences held in the KV cache
  std::string kv_dtype = "bf16";         // cache dtype of the decode bound
  std::optional<WeightFormat> weights;   // format of the decode bound; default: as stored
  int64_t group_size = 128;              // int8 / int4 scale groups
  std::optional<Machine> machine;        // decode bound on this machine
  double mtp_acceptance = 0.85;          // middle of the paper's 80-90 %
  std::optional<double> mtp_draft_cost;  // default: estimated from activated parameters
};
void ValidateAnalyzeOptions(const AnalyzeOptions& o);  // fails naming the option

// Every figure of one config.
struct ConfigReport {
  const Arch* arch = nullptr;
  std::vector<std::pair<std::string, int64_t>> kv_per_token;  // by cache dtype
  std::vector<std::pair<std::string, int64_t>> kv_at_context;
  int64_t kv_cached_tokens = 0;
  int64_t mtp_kv_per_token_bf16 = 0;
  std::vector<std::pair<WeightFormat, WeightBytes>> weights;
  MtpParams mtp;
  double draft_cost = 0;
  bool draft_cost_estimated = false;
  MtpResult mtp_speedup;
  TrainingFlops train;
  DecodeFlops decode;
  std::optional<DecodeBound> bound;
  int64_t kv_bf16() const;  // kv_per_token["bf16"]
};
ConfigReport BuildReport(const Arch& a, const AnalyzeOptions& o);

Json AnalyzeJson(const std::vector<Arch>& archs, const AnalyzeOptions& o);
std::string AnalyzeText(const std::vector<Arch>& archs, const AnalyzeOptions& o);

// Expert-parallel decode: `arch` may be null when every EpOptions field was given.
Json TpotJson(const Arch* arch, const std::string& interconnect, const EpOptions& o,
              const EpResult& r);
std::string TpotText(const Arch* arch, const std::string& interconnect, const EpOptions& o,
                     const EpResult& r);

Json MtpJson(const Arch* arch, const MtpOptions& o, bool draft_cost_estimated, const MtpResult& r);
std::string MtpText(const Arch* arch, const MtpOptions& o, bool draft_cost_estimated,
                    const MtpResult& r);

Json NetworkJson(const NetworkOptions& o, const std::vector<Topology>& t, const Prices& p);
std::string NetworkText(const NetworkOptions& o, const std::vector<Topology>& t, const Prices& p);

// Number formatting shared by the reports: 70272 -> "70,272"; 6.7103e11 -> "671.03 B".
std::string Grouped(int64_t n);
std::string Billions(double n);
std::string DecimalBytes(double bytes);  // 1 KB = 1000 B, as the paper

}  // namespace dsv3::analysis
