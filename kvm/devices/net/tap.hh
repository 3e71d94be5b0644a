#pragma once
// A TAP interface, the host end of a VM's network device: one /dev/net/tun
// file descriptor attached to the interface (opened with IFF_TAP |
// IFF_NO_PI | IFF_VNET_HDR, so every frame carries the 12-byte
// virtio_net_hdr_v1 that virtio-net passes through unchanged: checksum and
// segmentation offloads cross without the VMM touching the payload).
// Move-only; closing it detaches the VMM (a TAP made by `ip tuntap add`
// stays; one TUNSETIFF created goes away).
#include <string>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"

namespace ferry::kvm::net {

inline constexpr std::size_t kVnetHeaderBytes = 12;  // virtio_net_hdr_v1

class Tap {
 public:
  // Attaches to the TAP `name` (creating it if it does not exist; that
  // needs CAP_NET_ADMIN). Non-blocking and close-on-exec.
  static Result<Tap> open(const std::string& name);

  // What the VMM's reader accepts from the kernel (TUN_F_CSUM, TUN_F_TSO4,
  // TUN_F_TSO6): set from the offloads the guest's driver acked.
  Status set_offload(unsigned tun_flags) const;
  // Carrier off: the interface is down as far as the host stack and a
  // bridge are concerned (a migration destination before it runs the VM).
  Status set_carrier(bool on) const;

  int fd() const { return fd_.get(); }
  const std::string& name() const { return name_; }
  int ifindex() const { return ifindex_; }

 private:
  Tap(UniqueFd fd, std::string name, int ifindex) : fd_(std::move(fd)), name_(std::move(name)), ifindex_(ifindex) {}
  UniqueFd fd_;
  std::string name_;
  int ifindex_ = 0;
};

}  // namespace ferry::kvm::net
