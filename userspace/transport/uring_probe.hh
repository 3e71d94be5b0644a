#pragma once
// What io_uring can do for the migration transport on this host: whether a
// ring can be created at all, which send opcodes exist, and whether zero-copy
// sends really avoid the copy (they do not on loopback/veth, where a sender
// must fall back to plain SEND).
#include <optional>
#include <string>

#include "userspace/base/error.hh"

namespace ferry::transport {

struct UringCapabilities {
  // A ring could be created by this process.
  bool enabled = false;
  std::string disabled_reason;         // empty when enabled
  int setup_errno = 0;                 // io_uring_setup's errno when !enabled
  std::optional<int> disabled_sysctl;  // kernel.io_uring_disabled, if present

  // From the kernel's opcode probe (IORING_REGISTER_PROBE).
  bool op_send = false;
  bool op_send_zc = false;
  bool op_sendmsg_zc = false;

  // io_uring_register_buffers on a small buffer succeeded.
  bool registered_buffers = false;
  std::string registered_buffers_error;  // empty on success

  // Probed with a real SEND_ZC over loopback TCP with
  // IORING_SEND_ZC_REPORT_USAGE (Linux >= 6.2).
  bool zc_report_usage = false;  // the kernel accepted the flag
  bool zc_copied = false;        // the notification said the data was copied
  std::string zc_probe_error;    // why usage reporting is unknown; empty if known
};

// Never fails because a feature is missing (that is what the fields say);
// fails only when the opcode probe itself is unavailable, as then nothing
// above could be trusted.
Result<UringCapabilities> probe_io_uring();

}  // namespace ferry::transport
