// io_uring RAII wrapper and capability probe, run against the real kernel.
#include <sys/utsname.h>

#include <chrono>
#include <cstdio>
#include <utility>

#include <gtest/gtest.h>

#include "userspace/transport/io_uring.hh"
#include "userspace/transport/uring_probe.hh"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;

// Kernel (major, minor) from uname, e.g. {6, 18}.
std::pair<int, int> kernel_version() {
  utsname u{};
  EXPECT_EQ(::uname(&u), 0);
  int major = 0, minor = 0;
  EXPECT_EQ(std::sscanf(u.release, "%d.%d", &major, &minor), 2) << u.release;
  return {major, minor};
}

bool kernel_at_least(int major, int minor) { return kernel_version() >= std::pair{major, minor}; }

TEST(IoUring, NopRoundTrip) {
  auto ring = IoUring::create(4);
  ASSERT_TRUE(ring) << ring.error().what();
  auto sqe = ring->get_sqe();
  ASSERT_TRUE(sqe) << sqe.error().what();
  io_uring_prep_nop(*sqe);
  io_uring_sqe_set_data64(*sqe, 42);
  auto submitted = ring->submit();
  ASSERT_TRUE(submitted) << submitted.error().what();
  EXPECT_EQ(*submitted, 1u);
  auto c = ring->wait(1s);
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->user_data, 42u);
  EXPECT_EQ(c->res, 0);
}

TEST(IoUring, WaitTimesOutWithEtime) {
  auto ring = IoUring::create(4);
  ASSERT_TRUE(ring) << ring.error().what();
  auto c = ring->wait(10ms);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().sys_errno(), ETIME);
  EXPECT_NE(c.error().what().find("no completion"), std::string::npos) << c.error().what();
}

TEST(IoUring, MoveTransfersOwnership) {
  auto ring = IoUring::create(4);
  ASSERT_TRUE(ring) << ring.error().what();
  io_uring* raw = ring->raw();
  IoUring moved = std::move(*ring);
  EXPECT_EQ(moved.raw(), raw);
  EXPECT_EQ(ring->raw(), nullptr);
  auto sqe = ring->get_sqe();
  ASSERT_FALSE(sqe);
  EXPECT_NE(sqe.error().what().find("not set up"), std::string::npos);
}

TEST(IoUring, CreateRejectsZeroEntries) {
  auto ring = IoUring::create(0);
  ASSERT_FALSE(ring);
  EXPECT_EQ(ring.error().sys_errno(), EINVAL);
  EXPECT_NE(ring.error().what().find("io_uring_setup(entries=0"), std::string::npos)
      << ring.error().what();
}

TEST(UringProbe, ReportsThisKernelsCapabilities) {
  auto caps = probe_io_uring();
  ASSERT_TRUE(caps) << caps.error().what();
  if (caps->disabled_sysctl.value_or(0) == 2) {
    EXPECT_FALSE(caps->enabled);
    EXPECT_NE(caps->disabled_reason.find("io_uring_disabled=2"), std::string::npos);
    return;
  }
  ASSERT_TRUE(caps->enabled) << caps->disabled_reason;
  EXPECT_TRUE(caps->disabled_reason.empty());
  EXPECT_TRUE(caps->op_send);  // since 5.6
  EXPECT_TRUE(caps->registered_buffers) << caps->registered_buffers_error;
  if (kernel_at_least(6, 1)) {
    EXPECT_TRUE(caps->op_send_zc);
    EXPECT_TRUE(caps->op_sendmsg_zc);
  }
  if (kernel_at_least(6, 2)) {
    // Loopback never really sends from user pages, and the kernel says so.
    EXPECT_TRUE(caps->zc_report_usage) << caps->zc_probe_error;
    EXPECT_TRUE(caps->zc_copied);
    EXPECT_TRUE(caps->zc_probe_error.empty()) << caps->zc_probe_error;
  } else if (caps->op_send_zc) {
    EXPECT_FALSE(caps->zc_report_usage);
    EXPECT_NE(caps->zc_probe_error.find("REPORT_USAGE"), std::string::npos);
  }
}

}  // namespace
}  // namespace ferry::transport
