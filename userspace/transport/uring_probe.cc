#include "userspace/transport/uring_probe.hh"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>

#include <spdlog/spdlog.h>

#include "userspace/base/unique_fd.hh"
#include "userspace/transport/io_uring.hh"
#include "userspace/transport/uring_compat.hh"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;

constexpr auto kCqeTimeout = 2s;
constexpr size_t kProbeBytes = 4096;
constexpr uint64_t kZcSendTag = 0x7a63;  // "zc"

std::optional<int> read_io_uring_disabled() {
  // Added in Linux 6.6; absent means io_uring is governed by CONFIG only.
  std::ifstream knob("/proc/sys/kernel/io_uring_disabled");
  int value = 0;
  if (knob >> value) return value;
  return std::nullopt;
}

std::string disabled_reason(int err, std::optional<int> sysctl) {
  if (err == ENOSYS) return "kernel built without io_uring (CONFIG_IO_URING=n)";
  if (err == EPERM && sysctl == 2) return "disabled for all processes by kernel.io_uring_disabled=2";
  if (err == EPERM && sysctl == 1) {
    return "kernel.io_uring_disabled=1 and this process is neither privileged "
           "nor in kernel.io_uring_group";
  }
  if (err == EPERM) return "io_uring_setup denied (seccomp or LSM policy, e.g. a container profile)";
  return sys_error("io_uring_setup", err).what();
}

struct TcpPair {
  UniqueFd sender;
  UniqueFd receiver;
};

// A connected loopback TCP pair on an ephemeral port.
Result<TcpPair> loopback_tcp_pair() {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) return fail_sys("socket(listener)");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if (::bind(listener.get(), sa, len) != 0) return fail_sys("bind(127.0.0.1:0)");
  if (::listen(listener.get(), 1) != 0) return fail_sys("listen");
  if (::getsockname(listener.get(), sa, &len) != 0) return fail_sys("getsockname");

  TcpPair pair{UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)), UniqueFd()};
  if (!pair.sender) return fail_sys("socket(sender)");
  if (::connect(pair.sender.get(), sa, len) != 0) return fail_sys("connect(loopback)");
  pair.receiver = UniqueFd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!pair.receiver) return fail_sys("accept(loopback)");
  // The drain below must never hang the probe.
  timeval tv{.tv_sec = 2, .tv_usec = 0};
  if (::setsockopt(pair.receiver.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
    return fail_sys("setsockopt(SO_RCVTIMEO)");
  }
  return pair;
}

void probe_registered_buffers(IoUring& ring, UringCapabilities& caps) {
  std::array<char, kProbeBytes> buf{};
  iovec iov{.iov_base = buf.data(), .iov_len = buf.size()};
  if (int ret = io_uring_register_buffers(ring.raw(), &iov, 1); ret < 0) {
    caps.registered_buffers_error = sys_error("io_uring_register_buffers", -ret).what();
    return;
  }
  caps.registered_buffers = true;
  // Unregister before `buf` goes out of scope: the kernel pins its pages.
  io_uring_unregister_buffers(ring.raw());
}

// One SEND_ZC with REPORT_USAGE. It yields two CQEs: the send result (with
// F_MORE while the kernel still holds our pages) and then the notification
// (F_NOTIF) once it has let go. Their order is not relied upon.
void probe_zc_usage(IoUring& ring, UringCapabilities& caps) {
  auto pair = loopback_tcp_pair();
  if (!pair) {
    caps.zc_probe_error = pair.error().context("loopback TCP for SEND_ZC").what();
    return;
  }
  auto buf = std::make_unique<std::array<char, kProbeBytes>>();
  buf->fill('z');

  auto sqe = ring.get_sqe();
  if (!sqe) {
    caps.zc_probe_error = sqe.error().what();
    return;
  }
  io_uring_prep_send_zc(*sqe, pair->sender.get(), buf->data(), buf->size(), 0, 0);
  (*sqe)->ioprio |= IORING_SEND_ZC_REPORT_USAGE;
  io_uring_sqe_set_data64(*sqe, kZcSendTag);
  if (auto submitted = ring.submit(); !submitted) {
    caps.zc_probe_error = submitted.error().what();
    return;
  }

  bool have_result = false, have_notif = false, more = false;
  while (!have_result || (more && !have_notif)) {
    auto c = ring.wait(kCqeTimeout);
    if (!c) {
      // The kernel may still read from `buf`: leaking it is the only safe
      // choice once we stop waiting.
      (void)buf.release();
      caps.zc_probe_error = c.error().context("SEND_ZC completion").what();
      spdlog::warn("io_uring probe: {}; leaking its {} byte buffer", caps.zc_probe_error,
                   kProbeBytes);
      return;
    }
    if (c->user_data != kZcSendTag) continue;
    if (c->flags & IORING_CQE_F_NOTIF) {
      have_notif = true;
      caps.zc_copied = (static_cast<uint32_t>(c->res) & IORING_NOTIF_USAGE_ZC_COPIED) != 0;
      continue;
    }
    have_result = true;
    more = (c->flags & IORING_CQE_F_MORE) != 0;
    if (c->res == -EINVAL) {
      caps.zc_probe_error = "kernel rejected IORING_SEND_ZC_REPORT_USAGE (needs Linux 6.2)";
    } else if (c->res < 0) {
      caps.zc_probe_error = sys_error("SEND_ZC", -c->res).what();
    } else {
      caps.zc_report_usage = true;
      // Consume the data so the skb (and with it the notification) is freed.
      std::array<char, kProbeBytes> sink{};
      if (::recv(pair->receiver.get(), sink.data(), static_cast<size_t>(c->res), MSG_WAITALL) < 0) {
        spdlog::debug("io_uring probe: draining loopback receiver: {}", std::strerror(errno));
      }
    }
  }
}

}  // namespace

Result<UringCapabilities> probe_io_uring() {
  UringCapabilities caps;
  caps.disabled_sysctl = read_io_uring_disabled();

  auto ring = IoUring::create(8);
  if (!ring) {
    caps.setup_errno = ring.error().sys_errno();
    caps.disabled_reason = disabled_reason(caps.setup_errno, caps.disabled_sysctl);
    return caps;
  }
  caps.enabled = true;

  std::unique_ptr<io_uring_probe, decltype(&io_uring_free_probe)> probe(
      io_uring_get_probe_ring(ring->raw()), &io_uring_free_probe);
  if (!probe) {
    return fail("io_uring opcode probe (IORING_REGISTER_PROBE) failed: kernel older than 5.6?");
  }
  caps.op_send = io_uring_opcode_supported(probe.get(), IORING_OP_SEND);
  caps.op_send_zc = io_uring_opcode_supported(probe.get(), IORING_OP_SEND_ZC);
  caps.op_sendmsg_zc = io_uring_opcode_supported(probe.get(), IORING_OP_SENDMSG_ZC);

  probe_registered_buffers(*ring, caps);
  if (caps.op_send_zc) {
    probe_zc_usage(*ring, caps);
  } else {
    caps.zc_probe_error = "IORING_OP_SEND_ZC is not supported (needs Linux 6.0)";
  }
  return caps;
}

}  // namespace ferry::transport
