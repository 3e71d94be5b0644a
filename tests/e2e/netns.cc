#include "tests/e2e/netns.hh"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace ferry::test {

ClientNetns::ClientNetns() {
  std::thread([&] {
    if (::unshare(CLONE_NEWNET) < 0) {
      error_ = fmt::format("unshare(CLONE_NEWNET): {}", std::strerror(errno));
      return;
    }
    fd_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) error_ = fmt::format("open /proc/thread-self/ns/net: {}", std::strerror(errno));
  }).join();
}

ClientNetns::~ClientNetns() {
  if (fd_ >= 0) ::close(fd_);
}

void ClientNetns::inside(const std::function<void()>& fn) const {
  std::thread([&] {
    if (::setns(fd_, CLONE_NEWNET) == 0) fn();
  }).join();
}

ProcessResult ClientNetns::sh(const std::string& cmd, std::chrono::seconds limit) const {
  ProcessResult r;
  r.exit_code = -1;
  inside([&] { r = run_process({"/bin/sh", "-c", cmd}, limit); });
  return r;
}

int ClientNetns::connect_tcp(const std::string& ip, int port) const {
  int fd = -1;
  inside([&] { fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); });
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
  ::close(fd);
  return -1;
}

// RTM_NEWLINK: `here` of kind veth, its peer `there` created directly in
// this namespace (VETH_INFO_PEER with IFLA_NET_NS_FD).
bool ClientNetns::add_veth(const std::string& here, const std::string& there) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = RTM_NEWLINK;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
  nlh->nlmsg_seq = 1;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, here.c_str());
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  nlattr* peer = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
  auto* pifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  pifm->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, there.c_str());
  mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, static_cast<std::uint32_t>(fd_));
  mnl_attr_nest_end(nlh, peer);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);

  mnl_socket* nl = mnl_socket_open(NETLINK_ROUTE);
  if (!nl) {
    error_ = fmt::format("netlink socket: {}", std::strerror(errno));
    return false;
  }
  bool ok = mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) == 0 && mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) >= 0;
  if (ok) {
    const ssize_t n = mnl_socket_recvfrom(nl, buf.data(), buf.size());
    ok = n > 0 && mnl_cb_run(buf.data(), static_cast<std::size_t>(n), 1, mnl_socket_get_portid(nl), nullptr, nullptr) >= 0;
  }
  if (!ok) error_ = fmt::format("veth {} / {}: {}", here, there, std::strerror(errno));
  mnl_socket_close(nl);
  return ok;
}

}  // namespace ferry::test
