// What the trainer writes: Hugging Face checkpoints that every other command loads (FP8 E4M3 with
// 128x128 weight_scale_inv blocks like DeepSeek's releases, or BF16 / F32), and the resumable
// training state (float32 master weights, AdamW moments and step, routing biases, and the
// trainer's own metadata). Both are written under a temporary name and renamed into place, so an
// interrupted or failed save leaves the previous files intact.
#pragma once

#include <string>
#include <vector>

#include "core/json.h"
#include "train/optimizer.h"
#include "train/params.h"

namespace dsv3::train {

struct SaveOptions {
  // fp8: the tensors DeepSeek's FP8 releases store as E4M3 (ParamInfo::fp8_in_release) are
  // quantized per 128x128 block (scale = amax / 448, stored as `<name>_scale_inv`), the rest BF16
  // (routing biases F32). bf16: every tensor BF16 (biases F32). f32: every tensor F32.
  std::string dtype = "fp8";
  std::vector<std::string> copy_files;  // copied into the folder under their own names
};

// Writes config.json (params.config().raw, with quantization_config added for fp8 and removed
// otherwise, torch_dtype bfloat16 / float32) and one model.safetensors into `dir`, the tied MTP
// copies under both names with the same bytes. `dir` is created if needed; an existing checkpoint
// there is replaced only once the new one is complete: everything is written into the sibling
// folder `<dir>.tmp`, which then takes the place of `dir` in one atomic exchange (or, where the
// file system has none, by renaming the old folder to `<dir>.old` first). Files of an existing
// `dir` that are not part of a checkpoint (anything but config.json, model*.safetensors, the
// index and the copied files' names) are carried over. FP8 export of a non-finite value throws
// naming the tensor.
void SaveCheckpoint(const Params& params, const std::string& dir, const SaveOptions& options);

// The training state file (one safetensors file: "param/<name>", "adam_m/<name>",
// "adam_v/<name>", "bias/<name>" tensors in F32; metadata "dsv3_train_state" = `meta` serialized,
// "adam_step", and "config" = the config.json the state belongs to).
void SaveState(const std::string& path, const Params& params, const AdamW& optimizer,
               const Json& meta);
// Restores params (values and biases) and the optimizer from `path`; returns the metadata. Throws
// naming the file when it is not a training state, when it belongs to another config (any field
// that changes the computation differs; the message names it), or when a tensor is missing or has
// another shape (naming the tensor). Config fields are compared as Config::FromJson parses them
// (so an explicit default equals an absent field), other fields as raw JSON; names, versions,
// torch_dtype and quantization_config are ignored. Everything is validated before params or the
// optimizer change.
Json LoadState(const std::string& path, Params& params, AdamW& optimizer);

}  // namespace dsv3::train
