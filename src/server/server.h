// The OpenAI-compatible HTTP server: /v1/chat/completions and /v1/completions (JSON or
// server-sent events), /v1/models, /health and Prometheus /metrics, on cpp-httplib, in front of
// the batching Scheduler.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "model/model.h"
#include "runtime/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;            // 0: any free port (Bind returns it)
  std::string model_name;     // the id clients send as `model`
  size_t max_body = 8 << 20;  // request bodies beyond it get 413
  int http_threads = 0;       // 0: enough for every slot and queued request, plus spares
  SchedulerOptions scheduler;
};

class Server {
 public:
  Server(const Model& model, const Tokenizer& tokenizer, const ServerOptions& options);
  ~Server();
  // Binds the listening socket; returns the port. Throws dsv3::Error when it cannot.
  int Bind();
  // Serves until Stop(); returns once every connection is closed.
  void Run();
  // Stops accepting connections and cancels queued and running requests (streams end with an
  // error event, waiting requests get 503). Callable from any thread.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::server
