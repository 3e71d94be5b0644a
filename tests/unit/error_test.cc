#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"

namespace ferry {
namespace {

TEST(Error, ContextReadsFromOperationToCause) {
  Error e("short read");
  e.context("state section CPU").context("restore snapshot");
  EXPECT_EQ(e.message(), "restore snapshot: state section CPU: short read");
  EXPECT_EQ(e.what(), e.message());  // no errno, no suffix
}

TEST(Error, SysErrorCarriesErrnoText) {
  auto e = sys_error("open /dev/kvm", ENOENT);
  EXPECT_EQ(e.sys_errno(), ENOENT);
  EXPECT_EQ(e.what(), "open /dev/kvm failed: No such file or directory (errno 2)");
  EXPECT_EQ(fmt::format("{}", e), e.what());
}

TEST(Error, FailFormats) {
  Result<int> r = fail("slot {} at {:#x}", 3, 0x1000);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "slot 3 at 0x1000");
}

TEST(UniqueFd, MoveTransfersOwnershipAndClosesOnce) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ::close(fds[1]);
  UniqueFd a(fds[0]);
  UniqueFd b(std::move(a));
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): the point of the test
  EXPECT_EQ(b.get(), fds[0]);
  b.reset();
  EXPECT_EQ(::fcntl(fds[0], F_GETFD), -1);  // really closed
  EXPECT_EQ(errno, EBADF);
}

}  // namespace
}  // namespace ferry
