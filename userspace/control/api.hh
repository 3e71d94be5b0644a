#pragma once
// The control API of a running VM: JSON lines over a UNIX stream socket.
//
// A client writes one JSON object per line:   {"cmd": "status", "id": 7}
// and reads exactly one line back:            {"id": 7, "ok": true, "result": {...}}
//                                         or  {"id": 7, "ok": false, "error": "..."}
// "id" is optional and echoed verbatim. Requests on one connection are
// answered in order; several clients may be connected at once, and the
// server handles one request at a time (a snapshot holds the others back).
// The commands are documented in docs/control-api.md.
#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"

namespace ferry::control {

using json = nlohmann::json;

inline constexpr std::size_t kMaxLineBytes = 64 * 1024;

class ApiServer {
 public:
  // Handles one request; the error text becomes the response's "error".
  using Handler = std::function<Result<json>(const std::string& cmd, const json& request)>;

  // Binds `path` (mode 0600: the API controls the VM, so only its owner may
  // connect). A socket file left by a dead server is replaced; a live one
  // is an error, so two VMs never share an API path.
  static Result<ApiServer> listen(const std::string& path);

  ApiServer(ApiServer&&) noexcept = default;
  ApiServer& operator=(ApiServer&&) noexcept = default;
  ~ApiServer();  // unlinks the socket file

  // Also wait on `fd`; when it is readable, call `on_ready` (from serve()'s
  // thread). For eventfds/signalfds of the owner: the VM stopped, SIGTERM.
  void watch(int fd, std::function<void()> on_ready);

  // Serves until stop() is called (by a handler, a watch callback, or any
  // thread). Responses already being sent are completed first. May be
  // called again afterwards, with another handler (a receiving process
  // answers with one while the VM arrives, with the VM's once it runs).
  Status serve(const Handler& handler);
  // Forgets every watch(): the next serve() watches only what it is given.
  void clear_watches() { watched_.clear(); }
  void stop();

  const std::string& path() const { return path_; }

 private:
  struct Client {
    UniqueFd fd;      // non-blocking: a client that stops reading never blocks the server
    std::string in;   // bytes of a request line not yet complete
    std::string out;  // answers not yet accepted by the socket
  };
  // A client whose unread answers exceed this is dropped.
  static constexpr std::size_t kMaxPendingOut = 1 << 20;
  static constexpr std::size_t kMaxClients = 64;
  ApiServer() = default;
  // true: keep the client; false: drop it
  bool on_readable(Client& c, const Handler& handler);
  bool flush(Client& c);

  std::string path_;
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;  // eventfd: stop() from any thread
  std::vector<Client> clients_;
  std::vector<std::pair<int, std::function<void()>>> watched_;
  bool stopping_ = false;
};

// One request/response round trip: connects, sends, reads the answer line,
// and returns "result", or the server's "error" as an Error.
Result<json> call(const std::string& socket_path, const json& request,
                  std::chrono::milliseconds timeout = std::chrono::minutes(10));

}  // namespace ferry::control
