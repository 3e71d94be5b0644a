#pragma once
// Small blocking helpers every layer needs: whole sends and receives on a
// socket, and the kernel's /proc/meminfo figures.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "userspace/base/error.hh"

namespace ferry {

// Sends every byte (retrying on EINTR and short sends). MSG_NOSIGNAL: a
// peer that went away is an error, not a SIGPIPE that kills the process.
Status send_all(int fd, std::span<const std::byte> bytes);
inline Status send_all(int fd, std::string_view text) { return send_all(fd, std::as_bytes(std::span(text))); }
// Fills `out` completely; a peer that closes first is an error.
Status recv_all(int fd, std::span<std::byte> out);

// A /proc/meminfo field ("MemAvailable", "HugePages_Free", ...), as the
// kernel prints it: kB for sizes, a count for the HugePages_ counters.
// nullopt when the field (or the file) is missing.
std::optional<std::uint64_t> meminfo(std::string_view field);

}  // namespace ferry
