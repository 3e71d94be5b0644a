// io_uring checks: the migration transport is io_uring on TCP. Plain SEND is
// required; zero-copy and its usage reporting are optimisations whose
// absence only costs a copy.
#include "tools/doctor/checks.hh"
#include "userspace/transport/uring_probe.hh"

namespace ferry::doctor {
namespace {

Check make(std::string name, Level level, std::string detail, std::string remedy, nlohmann::json value) {
  return Check{"io_uring", std::move(name), level, std::move(detail), std::move(remedy), std::move(value)};
}

}  // namespace

std::vector<Check> check_io_uring() {
  std::vector<Check> out;
  auto caps = transport::probe_io_uring();
  if (!caps) {
    out.push_back(make("enabled", Level::kFail, caps.error().what(),
                       "io_uring opcode probing needs Linux >= 5.6; upgrade the host kernel", false));
    return out;
  }
  if (!caps->enabled) {
    std::string remedy = "enable CONFIG_IO_URING in the host kernel";
    if (caps->disabled_sysctl && *caps->disabled_sysctl != 0)
      remedy = "sysctl kernel.io_uring_disabled=0 (or add Ferry's group to kernel.io_uring_group)";
    else if (caps->setup_errno == EPERM)
      remedy = "the process is not allowed io_uring (seccomp or container policy): allow io_uring_setup";
    out.push_back(make("enabled", Level::kFail, fmt::format("io_uring unavailable: {}", caps->disabled_reason), remedy,
                       false));
    return out;
  }
  out.push_back(make("enabled", Level::kOk, "io_uring rings can be created", "", true));
  out.push_back(make("send", caps->op_send ? Level::kOk : Level::kFail,
                     caps->op_send ? "IORING_OP_SEND supported" : "IORING_OP_SEND not supported",
                     caps->op_send ? "" : "upgrade the host kernel (Linux >= 5.6)", caps->op_send));
  out.push_back(make("send_zc", caps->op_send_zc ? Level::kOk : Level::kWarn,
                     caps->op_send_zc ? "IORING_OP_SEND_ZC supported" : "no zero-copy send (plain sends are used)",
                     caps->op_send_zc ? "" : "upgrade the host kernel (Linux >= 6.0) for zero-copy sends", caps->op_send_zc));
  out.push_back(make("sendmsg_zc", caps->op_sendmsg_zc ? Level::kOk : Level::kWarn,
                     caps->op_sendmsg_zc ? "IORING_OP_SENDMSG_ZC supported" : "no zero-copy sendmsg",
                     caps->op_sendmsg_zc ? "" : "upgrade the host kernel (Linux >= 6.1)", caps->op_sendmsg_zc));
  if (caps->zc_report_usage) {
    out.push_back(make("zc_report_usage", Level::kOk,
                       fmt::format("zero-copy usage reporting works (loopback probe: kernel {})",
                                   caps->zc_copied ? "copied, as expected on loopback" : "did not copy"),
                       "", nlohmann::json{{"supported", true}, {"loopback_copied", caps->zc_copied}}));
  } else {
    out.push_back(make("zc_report_usage", Level::kWarn,
                       fmt::format("zero-copy usage reporting unavailable{}{}",
                                   caps->zc_probe_error.empty() ? "" : ": ", caps->zc_probe_error),
                       "Linux >= 6.2 reports whether SEND_ZC copied; without it Ferry uses plain sends",
                       nlohmann::json{{"supported", false}}));
  }
  out.push_back(make("registered_buffers", caps->registered_buffers ? Level::kOk : Level::kWarn,
                     caps->registered_buffers ? "buffer registration works"
                                              : fmt::format("buffer registration failed: {}", caps->registered_buffers_error),
                     caps->registered_buffers ? "" : "raise the locked-memory limit (ulimit -l)", caps->registered_buffers));
  return out;
}

}  // namespace ferry::doctor
