#include "tools/analyze.h"

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "analysis/arch.h"
#include "analysis/comm.h"
#include "analysis/compute.h"
#include "analysis/network.h"
#include "analysis/plot.h"
#include "analysis/report.h"
#include "core/error.h"

namespace dsv3::cli {

using namespace dsv3::analysis;

struct AnalyzeCommand::Args {
  CLI::App* cmd = nullptr;
  CLI::App* tpot = nullptr;
  CLI::App* mtp = nullptr;
  CLI::App* network = nullptr;

  // analyze CONFIG_OR_DIR...
  std::vector<std::string> configs;
  AnalyzeOptions options;
  std::string weights, machine, plot;
  double bandwidth_gbs = 0, tflops = 0, draft_cost = 0;
  int64_t plot_max_context = 131072;
  CLI::Option* bandwidth_opt = nullptr;
  CLI::Option* tflops_opt = nullptr;
  CLI::Option* draft_cost_opt = nullptr;
  bool json = false;

  // analyze tpot
  std::string tpot_config, preset;
  EpOptions ep;
  double tpot_bandwidth = 0;
  CLI::Option* ep_opts[5] = {};  // hidden, fan-out, layers, bandwidth, tokens-per-device
  bool tpot_json = false;

  // analyze mtp
  std::string mtp_config;
  MtpOptions mtp_options;
  CLI::Option* mtp_depth_opt = nullptr;
  CLI::Option* mtp_cost_opt = nullptr;
  bool mtp_json = false;

  // analyze network
  NetworkOptions net;
  Prices prices;
  bool network_json = false;
};

AnalyzeCommand::AnalyzeCommand(CLI::App& app) : args_(std::make_unique<Args>()) {
  Args& a = *args_;
  a.cmd = app.add_subcommand(
      "analyze",
      "co-design analysis of configs: KV cache, parameters, weight bytes, FLOPs, decode bounds "
      "(subcommands: tpot, mtp, network)");
  a.cmd->require_subcommand(0, 1);
  a.cmd->add_option("configs", a.configs,
                    "config.json files or model folders (several: side by side)");
  a.cmd->add_option("--seq-len", a.options.seq_len, "training sequence length (default 4096)");
  a.cmd->add_option("--context", a.options.context, "decode context length (default 4096)");
  a.cmd->add_option("--batch", a.options.batch, "sequences in the KV cache (default 1)");
  a.cmd->add_option("--kv-dtype", a.options.kv_dtype,
                    "KV cache dtype of the decode bound and the plot: bf16 (default), fp8, f32");
  a.cmd->add_option(
      "--weights", a.weights,
      "weight format of the decode bound: bf16, fp8, int8, int4 (default: as stored)");
  a.cmd->add_option("--group-size", a.options.group_size,
                    "weights per scale for int8/int4 (default 128)");
  std::string machines;
  for (const Machine& m : MachinePresets()) machines += (machines.empty() ? "" : ", ") + m.name;
  a.cmd->add_option("--machine", a.machine, "decode bound on a known machine: " + machines);
  a.bandwidth_opt = a.cmd->add_option("--bandwidth-gbs", a.bandwidth_gbs,
                                      "memory bandwidth for the decode bound, GB/s");
  a.tflops_opt = a.cmd->add_option("--tflops", a.tflops, "FLOP rate for the decode bound, TFLOPS");
  a.cmd->add_option("--mtp-acceptance", a.options.mtp_acceptance,
                    "MTP draft acceptance rate (default 0.85)");
  a.draft_cost_opt = a.cmd->add_option(
      "--mtp-draft-cost", a.draft_cost,
      "cost of one MTP draft relative to a decode step (default: estimated from parameters)");
  a.cmd->add_option("--plot", a.plot, "plot KV cache against context length to FILE.svg/.png");
  a.cmd->add_option("--plot-max-context", a.plot_max_context,
                    "right end of the plot's x axis (default 131072)");
  a.cmd->add_flag("--json", a.json, "print JSON");

  a.tpot = a.cmd->add_subcommand("tpot",
                                 "time per output token allowed by expert-parallel communication");
  a.tpot->add_option("config", a.tpot_config, "a MoE config.json or model folder");
  a.tpot->add_option("--preset", a.preset, "interconnect: ib-400g (50 GB/s, default), nvl72 (900)");
  a.ep_opts[3] = a.tpot->add_option("--bandwidth-gbs", a.tpot_bandwidth,
                                    "link bandwidth per device, GB/s (overrides --preset)");
  a.ep_opts[0] = a.tpot->add_option("--hidden", a.ep.hidden,
                                    "values sent per token (default: the config's hidden_size)");
  a.ep_opts[4] = a.tpot->add_option("--tokens-per-device", a.ep.tokens_per_device,
                                    "tokens per device per micro-batch (default 32)");
  a.ep_opts[1] = a.tpot->add_option("--fan-out", a.ep.fan_out,
                                    "experts per token (default: num_experts_per_tok + shared)");
  a.ep_opts[2] = a.tpot->add_option("--layers", a.ep.layers, "layers (default: num_hidden_layers)");
  a.tpot->add_option("--micro-batches", a.ep.micro_batches,
                     "dispatch+combine rounds per layer (default 2)");
  a.tpot->add_option("--dispatch-bytes", a.ep.dispatch_bytes,
                     "bytes per dispatched value (default 1, FP8)");
  a.tpot->add_option("--combine-bytes", a.ep.combine_bytes,
                     "bytes per combined value (default 2, BF16)");
  a.tpot->add_flag("--json", a.tpot_json, "print JSON");

  a.mtp = a.cmd->add_subcommand("mtp", "speedup of MTP speculative decoding");
  a.mtp->add_option("config", a.mtp_config, "a config.json or model folder with MTP modules");
  a.mtp->add_option("--acceptance", a.mtp_options.acceptance,
                    "probability a draft is accepted (default 0.85)");
  a.mtp_depth_opt =
      a.mtp->add_option("--depth", a.mtp_options.depth,
                        "drafted tokens per step (default: the config's MTP modules)");
  a.mtp_cost_opt = a.mtp->add_option(
      "--draft-cost", a.mtp_options.draft_cost,
      "time of one draft relative to a decode step (default: estimated from the config)");
  a.mtp->add_flag("--json", a.mtp_json, "print JSON");

  a.network = a.cmd->add_subcommand(
      "network", "endpoints, switches, links and cost of cluster network topologies");
  a.network->add_option("--radix", a.net.radix, "switch ports (default 64)");
  a.network->add_option("--planes", a.net.planes, "planes of the multi-plane fat tree (default 8)");
  a.network->add_option("--slim-fly-q", a.net.slim_fly_q,
                        "Slim Fly q (default: the largest that fits the radix)");
  a.network->add_option("--dragonfly-p", a.net.dragonfly_p, "Dragonfly endpoints per switch");
  a.network->add_option("--dragonfly-a", a.net.dragonfly_a, "Dragonfly switches per group");
  a.network->add_option("--dragonfly-h", a.net.dragonfly_h, "Dragonfly global links per switch");
  a.network->add_option("--dragonfly-g", a.net.dragonfly_g,
                        "Dragonfly groups (default: the most, a * h + 1)");
  a.network->add_option("--switch-price", a.prices.switch_usd, "dollars per switch");
  a.network->add_option("--link-price", a.prices.link_usd,
                        "dollars per switch-to-switch link (cable + transceivers)");
  a.network->add_option("--endpoint-price", a.prices.endpoint_usd,
                        "dollars per endpoint (NIC, its cable and transceivers)");
  a.network->add_flag("--json", a.network_json, "print JSON");
}

AnalyzeCommand::~AnalyzeCommand() = default;

bool AnalyzeCommand::selected() const { return args_->cmd->parsed(); }

namespace {

// Prints the JSON report or the text one (both are cheap to compute).
int Emit(bool json, const Json& report, const std::string& text) {
  if (json) {
    std::printf("%s\n", report.dump(2).c_str());
  } else {
    std::fputs(text.c_str(), stdout);
  }
  return 0;
}

}  // namespace

int AnalyzeCommand::Run() const {
  if (args_->tpot->parsed()) return RunTpot();
  if (args_->mtp->parsed()) return RunMtp();
  if (args_->network->parsed()) return RunNetwork();
  return RunConfigs();
}

int AnalyzeCommand::RunTpot() const {
  const Args& a = *args_;
  EpOptions o = a.ep;
  std::optional<Arch> arch;
  if (!a.tpot_config.empty()) {
    arch = LoadArch(a.tpot_config);
    const EpOptions d = EpDefaultsFor(*arch);
    if (!a.ep_opts[0]->count()) o.hidden = d.hidden;
    if (!a.ep_opts[1]->count()) o.fan_out = d.fan_out;
    if (!a.ep_opts[2]->count()) o.layers = d.layers;
  } else if (!a.ep_opts[0]->count() || !a.ep_opts[1]->count() || !a.ep_opts[2]->count()) {
    Fail(
        "analyze tpot: give a MoE config.json or model folder, or all of --hidden, --fan-out "
        "and --layers");
  }
  std::string name = a.preset.empty() ? "ib-400g" : a.preset;
  o.bandwidth_gbs = FindInterconnect(name).bandwidth_gbs;
  if (a.ep_opts[3]->count()) {
    o.bandwidth_gbs = a.tpot_bandwidth;
    if (a.preset.empty()) name = "a custom link";
  }
  const EpResult r = ExpertParallelDecode(o);
  const Arch* p = arch ? &*arch : nullptr;
  return Emit(a.tpot_json, TpotJson(p, name, o, r), TpotText(p, name, o, r));
}

int AnalyzeCommand::RunMtp() const {
  const Args& a = *args_;
  MtpOptions o = a.mtp_options;
  std::optional<Arch> arch;
  bool estimated = false;
  if (!a.mtp_config.empty()) {
    arch = LoadArch(a.mtp_config);
    if (arch->mtp_modules == 0 && !a.mtp_cost_opt->count()) {
      Fail("{}: has no MTP modules (num_nextn_predict_layers is 0); give --draft-cost",
           arch->source);
    }
    if (!a.mtp_depth_opt->count() && arch->mtp_modules > 0) o.depth = arch->mtp_modules;
    if (!a.mtp_cost_opt->count()) {
      o.draft_cost = MtpDraftCostEstimate(*arch);
      estimated = true;
    }
  } else if (!a.mtp_cost_opt->count()) {
    Fail(
        "analyze mtp: give --draft-cost (one draft's time relative to a decode step), or a config "
        "to estimate it from");
  }
  const MtpResult r = MtpSpeedup(o);
  const Arch* p = arch ? &*arch : nullptr;
  return Emit(a.mtp_json, MtpJson(p, o, estimated, r), MtpText(p, o, estimated, r));
}

int AnalyzeCommand::RunNetwork() const {
  const Args& a = *args_;
  const std::vector<Topology> t = AllTopologies(a.net);
  return Emit(a.network_json, NetworkJson(a.net, t, a.prices), NetworkText(a.net, t, a.prices));
}

int AnalyzeCommand::RunConfigs() const {
  const Args& a = *args_;
  if (a.configs.empty()) {
    Fail(
        "analyze: give one or more config.json files or model folders (or a subcommand: tpot, "
        "mtp, network)");
  }
  AnalyzeOptions o = a.options;
  if (!a.weights.empty()) o.weights = ParseWeightFormat(a.weights);
  if (a.draft_cost_opt->count()) o.mtp_draft_cost = a.draft_cost;
  if (!a.machine.empty()) {
    o.machine = FindMachine(a.machine);
    if (a.bandwidth_opt->count() || a.tflops_opt->count()) {
      o.machine->description += " (overridden on the command line)";
    }
  } else if (a.bandwidth_opt->count()) {
    o.machine = Machine{"custom", 0, 0, "given with --bandwidth-gbs / --tflops"};
  } else if (a.tflops_opt->count()) {
    Fail("--tflops needs --bandwidth-gbs or --machine");
  }
  if (o.machine) {
    if (a.bandwidth_opt->count()) o.machine->bandwidth_gbs = a.bandwidth_gbs;
    if (a.tflops_opt->count()) o.machine->tflops = a.tflops;
  }
  ValidateAnalyzeOptions(o);
  std::vector<Arch> archs;
  for (const std::string& c : a.configs) archs.push_back(LoadArch(c));
  if (!a.plot.empty()) {
    PlotOptions p;
    p.output = a.plot;
    p.max_context = a.plot_max_context;
    p.kv_dtype = o.kv_dtype;
    p.batch = o.batch;
    PlotKvCache(archs, p);
    std::fprintf(stderr, "dsv3: wrote %s\n", a.plot.c_str());
  }
  return Emit(a.json, AnalyzeJson(archs, o), AnalyzeText(archs, o));
}

}  // namespace dsv3::cli
