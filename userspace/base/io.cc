#include "userspace/base/io.hh"

#include <sys/socket.h>

#include <cerrno>
#include <fstream>
#include <string>

namespace ferry {

Status send_all(int fd, std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const ssize_t k = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return fail_sys("send");
    bytes = bytes.subspan(static_cast<std::size_t>(k));
  }
  return {};
}

Status recv_all(int fd, std::span<std::byte> out) {
  while (!out.empty()) {
    const ssize_t k = ::recv(fd, out.data(), out.size(), MSG_WAITALL);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return fail_sys("recv");
    if (k == 0) return fail("recv: the connection closed early");
    out = out.subspan(static_cast<std::size_t>(k));
  }
  return {};
}

std::optional<std::uint64_t> meminfo(std::string_view field) {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos || std::string_view(line).substr(0, colon) != field) continue;
    try {
      return std::stoull(line.substr(colon + 1));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace ferry
