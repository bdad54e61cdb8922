# The fuzz targets: tests/fuzz/<name>.cc defines DSV3_FUZZ_TARGET(<name>), seeds are in
# tests/fuzz/corpus/<name>/, crash inputs in tests/fuzz/regressions/<name>/. Adding a target is
# adding its name here: the fuzz build (DSV3_FUZZ=ON) makes fuzz_<name>, scripts/fuzz.sh runs it,
# and the normal build's fuzz_replay_test replays its corpus and regressions.
set(DSV3_FUZZ_TARGETS
  safetensors_header
  safetensors_index
  config
  tokenizer_encode
  tokenizer_decode
  chat_template
  server_request
)
