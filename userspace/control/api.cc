#include "userspace/base/io.hh"
#include "userspace/control/api.hh"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace ferry::control {
namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path))
    return fail("API socket path '{}' must be 1..{} bytes", path, sizeof(a.sun_path) - 1);
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

Result<UniqueFd> connect_unix(const std::string& path) {
  auto a = unix_address(path);
  if (!a) return std::unexpected(a.error());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fail_sys("socket(AF_UNIX)");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("connect to {}", path), e));
  }
  return fd;
}


json response(const json& request, Result<json> r) {
  json out = json::object();
  if (request.is_object() && request.contains("id")) out["id"] = request["id"];
  out["ok"] = r.has_value();
  if (r)
    out["result"] = std::move(*r);
  else
    out["error"] = r.error().what();
  return out;
}

}  // namespace

Result<ApiServer> ApiServer::listen(const std::string& path) {
  auto a = unix_address(path);
  if (!a) return std::unexpected(a.error());
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("API socket {}: exists and is not a socket", path);
    if (connect_unix(path)) return fail("API socket {}: another process is serving it", path);
    ::unlink(path.c_str());  // left behind by a process that died
  }
  ApiServer s;
  s.listen_fd_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.listen_fd_) return fail_sys("socket(AF_UNIX)");
  // umask-independent 0600 from the start: no window where others can connect.
  const mode_t old = ::umask(0177);
  const int rc = ::bind(s.listen_fd_.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof(*a));
  const int e = errno;
  ::umask(old);
  if (rc < 0) return std::unexpected(sys_error(fmt::format("bind {}", path), e));
  s.path_ = path;
  if (::listen(s.listen_fd_.get(), 16) < 0) return fail_sys("listen");
  s.wake_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s.wake_fd_) return fail_sys("eventfd");
  return s;
}

ApiServer::~ApiServer() {
  if (!path_.empty() && listen_fd_) ::unlink(path_.c_str());
}

void ApiServer::watch(int fd, std::function<void()> on_ready) { watched_.emplace_back(fd, std::move(on_ready)); }

void ApiServer::stop() {
  const std::uint64_t one = 1;
  // eventfd writes of 8 bytes cannot be partial; EAGAIN only when the
  // counter would overflow, i.e. stop was already requested.
  [[maybe_unused]] const ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
}

bool ApiServer::on_readable(Client& c, const Handler& handler) {
  char buf[4096];
  const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
  if (n == 0) return false;  // client closed
  // Nothing new (EAGAIN) still serves lines buffered while answers were
  // pending.
  if (n > 0) c.in.append(buf, static_cast<std::size_t>(n));
  for (std::size_t nl; (nl = c.in.find('\n')) != std::string::npos;) {
    // Checked per line: a long line whose newline arrived in the same read
    // as its overflow must not slip through.
    if (nl > kMaxLineBytes) break;
    const std::string line = c.in.substr(0, nl);
    c.in.erase(0, nl + 1);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json req = json::parse(line, nullptr, false);
    Result<json> r;
    if (req.is_discarded()) {
      r = fail("malformed request: not a JSON value");
    } else if (!req.is_object() || !req.contains("cmd") || !req["cmd"].is_string()) {
      r = fail("malformed request: expected an object with a string \"cmd\"");
    } else {
      const auto cmd = req["cmd"].get<std::string>();
      spdlog::debug("API request: {}", line);
      try {
        r = handler(cmd, req);
      } catch (const std::exception& e) {  // a bad request must never end the VM
        r = fail("{}: {}", cmd, e.what());
      }
    }
    // replace: a non-UTF-8 string (a file name, say) must not throw here.
    c.out += response(req, std::move(r)).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    if (!flush(c)) return false;
    if (!c.out.empty()) return true;  // read no more until the answers are taken
  }
  if (c.in.find('\n') > kMaxLineBytes && c.in.size() > kMaxLineBytes) {
    c.out += response(json(), fail("request line longer than {} bytes", kMaxLineBytes)).dump() + "\n";
    (void)flush(c);
    return false;
  }
  return true;
}

bool ApiServer::flush(Client& c) {
  while (!c.out.empty()) {
    const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) return false;
    c.out.erase(0, static_cast<std::size_t>(n));
  }
  return c.out.size() <= kMaxPendingOut;
}

Status ApiServer::serve(const Handler& handler) {
  while (!stopping_) {
    std::vector<pollfd> fds;
    fds.push_back({wake_fd_.get(), POLLIN, 0});
    // At the client limit the listener is not polled: pending connections
    // wait in the backlog instead of spinning on accept() failures.
    fds.push_back({listen_fd_.get(), static_cast<short>(clients_.size() < kMaxClients ? POLLIN : 0), 0});
    for (const auto& [fd, cb] : watched_) fds.push_back({fd, POLLIN, 0});
    const std::size_t polled = clients_.size();
    for (const auto& c : clients_)
      // While answers are pending, wait for room to send them rather than
      // for more requests (flow control per client).
      fds.push_back({c.fd.get(), static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return fail_sys("poll");
    }
    if (fds[0].revents) {
      std::uint64_t v;
      [[maybe_unused]] const ssize_t n = ::read(wake_fd_.get(), &v, sizeof v);
      stopping_ = true;
    }
    std::size_t i = 2;
    for (const auto& [fd, cb] : watched_)
      if (fds[i++].revents) cb();
    std::vector<bool> keep(polled, true);
    for (std::size_t k = 0; k < polled; ++k, ++i) {
      auto& c = clients_[k];
      if (!fds[i].revents) continue;
      if (fds[i].revents & (POLLERR | POLLNVAL)) {
        keep[k] = false;
      } else if (!c.out.empty()) {
        keep[k] = flush(c) && !(fds[i].revents & POLLHUP);
        // Requests that arrived while the answers were pending.
        if (keep[k] && c.out.empty() && c.in.find('\n') != std::string::npos) keep[k] = on_readable(c, handler);
      } else {
        keep[k] = on_readable(c, handler);
      }
    }
    for (std::size_t k = polled; k-- > 0;)
      if (!keep[k]) clients_.erase(clients_.begin() + static_cast<std::ptrdiff_t>(k));
    // New clients last, so the indices above matched what was polled.
    if (fds[1].revents & POLLIN) {
      UniqueFd c(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (c) clients_.push_back({std::move(c), {}, {}});
    }
    // A stop() from a handler wrote the eventfd; pick it up without waiting.
    pollfd w{wake_fd_.get(), POLLIN, 0};
    if (::poll(&w, 1, 0) > 0) {
      std::uint64_t v;
      [[maybe_unused]] const ssize_t n = ::read(wake_fd_.get(), &v, sizeof v);
      stopping_ = true;
    }
  }
  stopping_ = false;  // served again later, it runs until the next stop()
  return {};
}

Result<json> call(const std::string& socket_path, const json& request, std::chrono::milliseconds timeout) {
  auto fd = connect_unix(socket_path);
  if (!fd) return std::unexpected(fd.error().context("is the VM running? (ferry run/restore --api PATH)"));
  if (auto ok = send_all(fd->get(), request.dump() + "\n"); !ok) return std::unexpected(ok.error());
  std::string in;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (in.find('\n') == std::string::npos) {
    // Rounded up, so the call never gives up before the deadline.
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return fail("no answer from {} within {} ms", socket_path, timeout.count());
    pollfd p{fd->get(), POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return fail_sys("poll");
    if (r == 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd->get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      return std::unexpected(sys_error(fmt::format("read from {}", socket_path), e));
    }
    if (n == 0) return fail("{} closed the connection without answering", socket_path);
    in.append(buf, static_cast<std::size_t>(n));
    if (in.size() > 16 * kMaxLineBytes) return fail("answer from {} too long", socket_path);
  }
  json resp = json::parse(in.substr(0, in.find('\n')), nullptr, false);
  if (resp.is_discarded() || !resp.is_object() || !resp.contains("ok") || !resp["ok"].is_boolean())
    return fail("malformed answer from {}", socket_path);
  if (!resp["ok"].get<bool>())
    return fail("{}", resp.contains("error") && resp["error"].is_string() ? resp["error"].get<std::string>()
                                                                          : std::string("request failed"));
  return resp.contains("result") ? resp["result"] : json::object();
}

}  // namespace ferry::control
