#include "bpf/load_errors.hh"

#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

namespace ferry::bpf {
namespace {
constexpr std::string_view kPrivileges = " (need root, or CAP_BPF + CAP_PERFMON)";
}  // namespace

std::optional<std::string> tracefs_events_dir() {
  for (const char* root : {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}) {
    auto dir = fmt::format("{}/events", root);
    if (::access(dir.c_str(), F_OK) == 0) return dir;
  }
  return std::nullopt;
}

Error load_error(std::string_view program, std::string_view step, int err) {
  std::string_view hint;
  if (err == EPERM) {
    hint = kPrivileges;
  } else if (err == EACCES || err == EINVAL) {
    hint = " (the verifier's reasons are in the libbpf log above)";
  } else if (err == ESRCH || err == ENOENT) {
    hint = " (CO-RE found no matching kernel type: the libbpf log above says which)";
  }
  return Error(fmt::format("{} {} failed{}", step, program, hint), err);
}

Error attach_error(std::string_view program, std::string_view tracepoint, int err, std::string_view missing) {
  std::string hint;
  if (err == EPERM || err == EACCES) {
    hint = kPrivileges;
  } else if (err == ENOENT) {
    const auto events = tracefs_events_dir();
    if (!events) {
      hint = " (tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing)";
    } else if (::access(fmt::format("{}/{}", *events, tracepoint).c_str(), F_OK) != 0) {
      hint = fmt::format(" ({})", missing);
    }
  }
  return Error(fmt::format("attach {} to tracepoint {} failed{}", program, tracepoint, hint), err);
}

}  // namespace ferry::bpf
