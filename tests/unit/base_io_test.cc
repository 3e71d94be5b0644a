// userspace/base/io: whole sends and receives over a real socketpair, and
// /proc/meminfo fields as the kernel prints them.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "userspace/base/io.hh"
#include "userspace/base/unique_fd.hh"

namespace ferry {
namespace {

TEST(BaseIo, SendAllAndRecvAllMoveEveryByteAndReportAnEarlyClose) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  // More than a socket buffer holds: the sends are short and must go on.
  std::vector<std::byte> out(4 << 20);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::byte>(i * 31 + 7);
  Status sent;
  std::thread t([&] { sent = send_all(a.get(), out); });
  std::vector<std::byte> in(out.size());
  ASSERT_TRUE(recv_all(b.get(), in));
  t.join();
  ASSERT_TRUE(sent) << sent.error().what();
  EXPECT_EQ(in, out);

  ASSERT_TRUE(send_all(a.get(), std::string_view("abc")));
  a = UniqueFd();  // the peer goes away after 3 of 8 bytes
  std::vector<std::byte> eight(8);
  auto cut = recv_all(b.get(), eight);
  ASSERT_FALSE(cut);
  EXPECT_NE(cut.error().message().find("closed early"), std::string::npos) << cut.error().what();
  // Sending to a closed peer is an error (EPIPE), not a SIGPIPE.
  auto dead = send_all(b.get(), std::string_view("x"));
  ASSERT_FALSE(dead);
  EXPECT_NE(dead.error().message().find("send"), std::string::npos);
}

TEST(BaseIo, MeminfoReadsTheKernelsFields) {
  const auto total = meminfo("MemTotal");
  ASSERT_TRUE(total);
  EXPECT_GT(*total, 1024u);  // kB: any machine that runs this has more than 1 MiB
  const auto avail = meminfo("MemAvailable");
  ASSERT_TRUE(avail);
  EXPECT_LE(*avail, *total);
  EXPECT_FALSE(meminfo("NoSuchField"));
  EXPECT_FALSE(meminfo("MemTot"));  // a prefix is not the field
}

}  // namespace
}  // namespace ferry
