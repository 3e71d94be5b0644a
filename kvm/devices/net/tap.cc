#include "kvm/devices/net/tap.hh"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>

#include <cstring>

#include <fmt/format.h>

namespace ferry::kvm::net {

Result<Tap> Tap::open(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ)
    return fail("TAP name '{}': 1 to {} characters", name, IFNAMSIZ - 1);
  UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return fail_sys("open /dev/net/tun");
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(
        fmt::format("TAP {}: TUNSETIFF{}", name,
                    e == EPERM ? " (needs CAP_NET_ADMIN, or a TAP made for this user with `ip tuntap add`)"
                    : e == EINVAL ? " (a TUN, or a TAP without IFF_VNET_HDR support?)"
                                  : ""),
        e));
  }
  int hdr = static_cast<int>(kVnetHeaderBytes);
  if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &hdr) < 0) return fail_sys(fmt::format("TAP {}: TUNSETVNETHDRSZ", name));
  const int index = static_cast<int>(::if_nametoindex(name.c_str()));
  return Tap(std::move(fd), name, index);
}

Status Tap::set_offload(unsigned tun_flags) const {
  if (::ioctl(fd_.get(), TUNSETOFFLOAD, tun_flags) < 0)
    return fail_sys(fmt::format("TAP {}: TUNSETOFFLOAD {:#x}", name_, tun_flags));
  return {};
}

Status Tap::set_carrier(bool on) const {
  int v = on ? 1 : 0;
  if (::ioctl(fd_.get(), TUNSETCARRIER, &v) < 0) return fail_sys(fmt::format("TAP {}: TUNSETCARRIER {}", name_, v));
  return {};
}

}  // namespace ferry::kvm::net
