#include "kvm/devices/net/virtio_net.hh"

#include <linux/if_tun.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "userspace/base/bytes.hh"
#include "userspace/base/thread_name.hh"

namespace ferry::kvm::net {
namespace {

using virtio::bit;

constexpr std::uint32_t kTagTap = 10, kTagWake = 11;
// The largest frame a TAP hands over: a 64 KiB GSO packet and its header.
constexpr std::size_t kFrameMax = 65536 + kVnetHeaderBytes + 64;
constexpr std::size_t kNumBuffersOffset = 10;  // in virtio_net_hdr_v1

// Control queue (5.1.6.5).
constexpr std::uint8_t kCtrlRx = 0, kCtrlMac = 1, kCtrlVlan = 2, kCtrlAnnounce = 3, kCtrlMq = 4;
constexpr std::uint8_t kCtrlOk = 0, kCtrlErr = 1;

}  // namespace

Result<std::unique_ptr<VirtioNet>> VirtioNet::create(Tap tap, Mac mac, const GuestAccess& mem) {
  auto wake = EventFd::create();
  if (!wake) return std::unexpected(wake.error());
  std::vector<EventFd> kicks;
  for (int i = 0; i < 3; ++i) {
    auto k = EventFd::create();
    if (!k) return std::unexpected(k.error());
    kicks.push_back(std::move(*k));
  }
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return fail_sys("epoll_create1");
  auto add = [&](int fd, std::uint32_t tag) -> Status {
    epoll_event ev{.events = EPOLLIN, .data = {.u32 = tag}};
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) < 0) return fail_sys("epoll_ctl ADD");
    return {};
  };
  if (auto ok = add(wake->fd(), kTagWake); !ok) return std::unexpected(ok.error());
  for (std::uint32_t i = 0; i < kicks.size(); ++i)
    if (auto ok = add(kicks[i].fd(), i); !ok) return std::unexpected(ok.error());
  // The TAP is registered with no events: RX is watched only while the
  // guest has buffers posted (watch_tap).
  epoll_event tev{.events = 0, .data = {.u32 = kTagTap}};
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, tap.fd(), &tev) < 0) return fail_sys("epoll_ctl ADD tap");
  return std::unique_ptr<VirtioNet>(
      new VirtioNet(std::move(tap), mac, mem, std::move(*wake), std::move(kicks), std::move(ep)));
}

VirtioNet::VirtioNet(Tap tap, Mac mac, const GuestAccess& mem, EventFd wake, std::vector<EventFd> kicks,
                     UniqueFd epoll)
    : tap_(std::move(tap)),
      mem_(mem),
      wake_(std::move(wake)),
      kicks_(std::move(kicks)),
      epoll_(std::move(epoll)),
      mac_(mac),
      frame_(kFrameMax) {}

VirtioNet::~VirtioNet() {
  stop_announcing();
  stop_worker();
}

std::uint64_t VirtioNet::features() const {
  return bit(kNetCsum) | bit(kNetGuestCsum) | bit(kNetMac) | bit(kNetGuestTso4) | bit(kNetGuestTso6) |
         bit(kNetHostTso4) | bit(kNetHostTso6) | bit(kNetMrgRxbuf) | bit(kNetStatus) | bit(kNetCtrlVq) |
         bit(kNetCtrlRx) | bit(kNetGuestAnnounce);
}

void VirtioNet::read_config(std::uint32_t offset, std::span<std::uint8_t> data) const {
  std::array<std::uint8_t, 10> c{};
  {
    std::lock_guard lock(mu_);
    std::memcpy(c.data(), mac_.data(), 6);
    c[6] = static_cast<std::uint8_t>(status_);
    c[7] = static_cast<std::uint8_t>(status_ >> 8);
  }
  c[8] = 1;  // max_virtqueue_pairs
  std::memcpy(data.data(), c.data() + offset, data.size());
}

Status VirtioNet::activate(std::uint64_t features, std::vector<virtio::SplitQueue*> queues, virtio::Interrupt& irq) {
  if (queues.size() != 3 || !queues[kRxQueue] || !queues[kTxQueue])
    return fail("virtio-net: the driver enabled no receive or no transmit queue");
  if ((features & bit(kNetCtrlVq)) && !queues[kCtrlQueue])
    return fail("virtio-net: CTRL_VQ acked, but the control queue is not enabled");
  // What the guest's receive path accepts is what the TAP may hand over.
  unsigned offload = 0;
  if (features & bit(kNetGuestCsum)) {
    offload |= TUN_F_CSUM;
    if (features & bit(kNetGuestTso4)) offload |= TUN_F_TSO4;
    if (features & bit(kNetGuestTso6)) offload |= TUN_F_TSO6;
  }
  if (auto ok = tap_.set_offload(offload); !ok) return ok;
  stop_worker();
  {
    // pause_ stays as it is: a device restored paused (a migration's
    // destination) starts parked and touches nothing until resume.
    std::lock_guard lock(mu_);
    acked_ = features;
    rx_ = queues[kRxQueue];
    tx_ = queues[kTxQueue];
    ctrl_ = (features & bit(kNetCtrlVq)) ? queues[kCtrlQueue] : nullptr;
    irq_ = &irq;
    stop_ = parked_ = false;
  }
  worker_ = std::thread([this] {
    name_this_thread(fmt::format("net-{}", tap_.name()).substr(0, 15));
    run();
  });
  return {};
}

void VirtioNet::kick(std::uint16_t queue) {
  if (queue < kicks_.size()) (void)kicks_[queue].signal();
}

void VirtioNet::stop_worker() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  (void)wake_.signal();
  if (worker_.joinable()) worker_.join();
}

void VirtioNet::reset() {
  stop_worker();
  stop_announcing();
  watch_tap(false);
  std::lock_guard lock(mu_);
  rx_ = tx_ = ctrl_ = nullptr;
  irq_ = nullptr;
  acked_ = 0;
  status_ = kNetStatusLinkUp;
  pause_ = false;
  pending_.clear();
}

// Also before activate: the worker then starts parked.
void VirtioNet::pause() {
  std::unique_lock lock(mu_);
  pause_ = true;
  if (!worker_.joinable() || stop_) return;
  (void)wake_.signal();
  cv_.wait(lock, [&] { return parked_ || stop_; });
}

void VirtioNet::resume() {
  {
    std::lock_guard lock(mu_);
    pause_ = false;
  }
  cv_.notify_all();
  // A destination's TAP was made with its carrier off (no traffic for a VM
  // that does not run here yet); from now on it carries the VM's.
  if (auto ok = tap_.set_carrier(true); !ok) spdlog::warn("virtio-net {}: {}", tap_.name(), ok.error());
}

// The RARP QEMU sends after a migration (ethertype 0x8035, "reverse
// request", the VM's MAC as sender and target), so switches learn the MAC's
// new port even when the guest does not announce itself.
std::vector<std::byte> rarp_frame(const Mac& mac) {
  std::vector<std::byte> f(kVnetHeaderBytes + 60);
  std::byte* e = f.data() + kVnetHeaderBytes;
  std::memset(e, 0xff, 6);
  std::memcpy(e + 6, mac.data(), 6);
  const std::uint8_t rest[] = {0x80, 0x35, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03};
  std::memcpy(e + 12, rest, sizeof rest);
  std::memcpy(e + 22, mac.data(), 6);  // sender hardware address; sender IP 0
  std::memcpy(e + 32, mac.data(), 6);  // target hardware address; target IP 0
  return f;
}

void VirtioNet::announce_after_migration() {
  stop_announcing();
  const bool guest = announce();
  {
    std::lock_guard lock(mu_);
    stop_announce_ = false;
  }
  announcer_ = std::thread([this, guest] {
    name_this_thread("net-announce");
    // QEMU's schedule: the first after 50 ms, then 4 more, each 100 ms
    // later than the one before.
    auto wait = std::chrono::milliseconds(50);
    for (int round = 0; round < 5; ++round) {
      {
        std::unique_lock lock(mu_);
        if (cv_.wait_for(lock, wait, [&] { return stop_announce_; })) return;
      }
      const auto frame = rarp_frame(mac());
      if (::write(tap_.fd(), frame.data(), frame.size()) == static_cast<ssize_t>(frame.size())) ++rarps_sent_;
      wait += std::chrono::milliseconds(100);
    }
    spdlog::info("virtio-net {}: announced {} after the migration ({} RARP frames{})", tap_.name(),
                 format_mac(mac()), rarps_sent_.load(), guest ? ", and the guest was asked to announce itself" : "");
  });
}

void VirtioNet::stop_announcing() {
  {
    std::lock_guard lock(mu_);
    stop_announce_ = true;
  }
  cv_.notify_all();
  if (announcer_.joinable()) announcer_.join();
}

void VirtioNet::watch_tap(bool on) {
  if (on == tap_watched_) return;
  epoll_event ev{.events = on ? static_cast<std::uint32_t>(EPOLLIN) : 0u, .data = {.u32 = kTagTap}};
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, tap_.fd(), &ev) == 0) tap_watched_ = on;
}

void VirtioNet::broken(const Error& why) {
  watch_tap(false);
  if (irq_) irq_->needs_reset(why);
}

void VirtioNet::run() {
  bool ok = true;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (pause_ && !stop_) {
        // Parked: no guest memory is touched until resume.
        parked_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !pause_ || stop_; });
        parked_ = false;
      }
      if (stop_) return;
    }
    if (ok) ok = serve_tx() && serve_ctrl() && serve_rx();
    if (!ok) watch_tap(false);
    epoll_event ev[8];
    const int n = ::epoll_wait(epoll_.get(), ev, 8, -1);
    if (n < 0 && errno != EINTR) {
      spdlog::error("virtio-net {}: epoll_wait: {}", tap_.name(), std::strerror(errno));
      // Ended: a pause() waiting for this thread to park must not wait forever.
      std::lock_guard lock(mu_);
      stop_ = true;
      cv_.notify_all();
      return;
    }
    for (int i = 0; i < n; ++i) {
      const std::uint32_t tag = ev[i].data.u32;
      if (tag == kTagWake) (void)wake_.take();
      else if (tag < kicks_.size()) (void)kicks_[tag].take();
    }
  }
}

bool VirtioNet::serve_tx() {
  std::vector<iovec> iov;
  bool used = false;
  for (;;) {
    auto c = tx_->pop();
    if (!c) {
      broken(c.error());
      return false;
    }
    if (!c->has_value()) break;
    const virtio::Chain& chain = **c;
    iov.clear();
    const bool fits = chain.readable_bytes >= kVnetHeaderBytes && chain.readable_bytes <= kFrameMax &&
                chain.readable.size() <= IOV_MAX && chain.writable.empty();
    if (fits)
      for (const auto& b : chain.readable) iov.push_back({.iov_base = b.host, .iov_len = b.len});
    const ssize_t n = fits ? ::writev(tap_.fd(), iov.data(), static_cast<int>(iov.size())) : -1;
    if (n < 0) {
      ++tx_dropped_;
    } else {
      ++tx_packets_;
      tx_bytes_ += static_cast<std::uint64_t>(n) - kVnetHeaderBytes;
    }
    if (auto ok = tx_->push(chain.head, 0); !ok) {
      broken(ok.error());
      return false;
    }
    used = true;
  }
  if (used && tx_->should_interrupt()) irq_->used_buffers();
  return true;
}

bool VirtioNet::serve_rx() {
  bool used = false;
  // A budget per pass, so a busy TAP does not starve TX, the control queue
  // or a pause (the TAP stays watched: the next pass comes at once).
  for (int budget = 64; budget > 0; --budget) {
    std::span<std::byte> frame;
    if (!pending_.empty()) {
      frame = pending_;
    } else {
      if (!rx_->has_available() && !rx_->want_kicks(true)) {
        // No buffers: leave the backlog in the TAP until the RX kick that
        // posting buffers brings (want_kicks re-checked, so buffers posted
        // just now are not missed).
        watch_tap(false);
        break;
      }
      const ssize_t n = ::read(tap_.fd(), frame_.data(), frame_.size());
      if (n < 0) {
        watch_tap(true);  // EAGAIN: the TAP's next frame wakes us
        break;
      }
      if (static_cast<std::size_t>(n) < kVnetHeaderBytes) continue;
      frame = std::span(frame_).first(static_cast<std::size_t>(n));
    }
    const std::uint16_t seen = rx_->available_index();
    const Delivery d = deliver(frame);
    if (d == Delivery::kBroken) return false;
    if (d == Delivery::kWait) {
      // Not enough buffers posted for this frame yet: keep it, and wait for
      // the guest to post more (it refills as it takes what it has).
      if (pending_.empty()) pending_.assign(frame.begin(), frame.end());
      if (rx_->want_kick_when_more(seen)) continue;  // more came meanwhile
      watch_tap(false);
      break;
    }
    pending_.clear();
    used = true;
  }
  if (used && rx_->should_interrupt()) irq_->used_buffers();
  return true;
}

// One frame (with its header) into as many chains as it needs: several
// with MRG_RXBUF (num_buffers says how many), else one that holds it all.
VirtioNet::Delivery VirtioNet::deliver(std::span<std::byte> frame) {
  const bool merge = acked_ & bit(kNetMrgRxbuf);
  auto& taken = taken_;  // reused: no allocation per frame
  taken.clear();
  std::optional<virtio::Chain> first;
  std::size_t off = 0;
  while (off < frame.size()) {
    auto c = rx_->pop();
    if (!c) {
      rx_->unpop(static_cast<std::uint16_t>(taken.size()));
      broken(c.error());
      return Delivery::kBroken;
    }
    if (!c->has_value()) {
      // Out of buffers part way: give them back and wait for more.
      rx_->unpop(static_cast<std::uint16_t>(taken.size()));
      return Delivery::kWait;
    }
    const virtio::Chain& chain = **c;
    const bool fits = (merge || taken.empty()) && chain.writable_bytes >= (taken.empty() ? kVnetHeaderBytes : 1) &&
                      (merge || chain.writable_bytes >= frame.size());
    if (!fits) {
      // A buffer that can never hold it (too small without MRG_RXBUF, or no
      // room for the header): drop this frame, keep the buffers.
      rx_->unpop(static_cast<std::uint16_t>(taken.size() + 1));
      ++rx_dropped_;
      return Delivery::kDropped;
    }
    const std::size_t len = std::min<std::uint64_t>(chain.writable_bytes, frame.size() - off);
    if (auto ok = chain.write(mem_, 0, frame.subspan(off, len)); !ok) {
      rx_->unpop(static_cast<std::uint16_t>(taken.size() + 1));
      broken(ok.error());
      return Delivery::kBroken;
    }
    taken.emplace_back(chain.head, static_cast<std::uint32_t>(len));
    if (!first) first = std::move(**c);
    off += len;
  }
  // The TAP leaves num_buffers to us.
  const std::uint16_t count = static_cast<std::uint16_t>(taken.size());
  std::byte num[2] = {std::byte(count & 0xff), std::byte(count >> 8)};
  if (auto ok = first->write(mem_, kNumBuffersOffset, num); !ok) {
    broken(ok.error());
    return Delivery::kBroken;
  }
  for (const auto& [head, len] : taken)
    if (auto ok = rx_->push(head, len); !ok) {
      broken(ok.error());
      return Delivery::kBroken;
    }
  ++rx_packets_;
  rx_bytes_ += frame.size() - kVnetHeaderBytes;
  return Delivery::kDelivered;
}

bool VirtioNet::serve_ctrl() {
  if (!ctrl_) return true;
  bool used = false;
  for (;;) {
    auto c = ctrl_->pop();
    if (!c) {
      broken(c.error());
      return false;
    }
    if (!c->has_value()) break;
    const virtio::Chain& chain = **c;
    std::array<std::byte, 64> cmd{};
    const std::size_t got = chain.read(0, cmd);
    std::uint8_t ack = kCtrlErr;
    if (got >= 2) {
      const auto cls = std::to_integer<std::uint8_t>(cmd[0]);
      const auto what = std::to_integer<std::uint8_t>(cmd[1]);
      if (cls == kCtrlRx || cls == kCtrlVlan) {
        ack = kCtrlOk;  // promiscuous, all-multicast, VLAN filters: the TAP delivers everything anyway
      } else if (cls == kCtrlMac) {
        ack = kCtrlOk;
        if (what == 1 && got >= 8) {  // MAC_ADDR_SET
          std::lock_guard lock(mu_);
          std::memcpy(mac_.data(), cmd.data() + 2, 6);
        }
      } else if (cls == kCtrlAnnounce && what == 0) {
        std::lock_guard lock(mu_);
        status_ &= static_cast<std::uint16_t>(~kNetStatusAnnounce);
        ack = kCtrlOk;
      } else if (cls == kCtrlMq && what == 0 && got >= 4) {
        ack = (cmd[2] == std::byte{1} && cmd[3] == std::byte{0}) ? kCtrlOk : kCtrlErr;  // one queue pair
      }
    }
    const std::byte a{ack};
    const bool answered = chain.writable_bytes >= 1 && chain.write(mem_, 0, std::span(&a, 1));
    if (auto ok = ctrl_->push(chain.head, answered ? 1 : 0); !ok) {
      broken(ok.error());
      return false;
    }
    used = true;
  }
  if (used && ctrl_->should_interrupt()) irq_->used_buffers();
  return true;
}

bool VirtioNet::announce() {
  virtio::Interrupt* irq = nullptr;
  {
    // acked_ and irq_ change under mu_ (activate, reset on a vCPU thread).
    std::lock_guard lock(mu_);
    if (!(acked_ & bit(kNetGuestAnnounce)) || !irq_) return false;
    status_ |= kNetStatusAnnounce;
    irq = irq_;
  }
  irq->config_changed();
  return true;
}

NetFigures VirtioNet::figures() const {
  return {rx_packets_.load(), rx_bytes_.load(), rx_dropped_.load(), tx_packets_.load(),
          tx_bytes_.load(),   tx_dropped_.load(), rarps_sent_.load()};
}

Mac VirtioNet::mac() const {
  std::lock_guard lock(mu_);
  return mac_;
}

std::vector<std::byte> VirtioNet::save() const {
  ByteWriter w;
  w.put_u32(kNetStateVersion);
  std::lock_guard lock(mu_);
  for (auto b : mac_) w.put_u8(b);
  w.put_u16(status_);
  return std::move(w).take();
}

Status VirtioNet::restore(std::span<const std::byte> state) {
  ByteReader r(state);
  std::uint32_t version = 0;
  Mac mac{};
  std::uint16_t status = 0;
  if (auto ok = r.get(version); !ok) return std::unexpected(std::move(ok.error()).context("virtio-net state"));
  if (version != kNetStateVersion)
    return fail("virtio-net state: version {} is not supported (this build reads {})", version, kNetStateVersion);
  if (auto ok = r.get(mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], status); !ok)
    return std::unexpected(std::move(ok.error()).context("virtio-net state"));
  if (auto ok = r.expect_end(); !ok) return std::unexpected(std::move(ok.error()).context("virtio-net state"));
  std::lock_guard lock(mu_);
  mac_ = mac;  // the VM's MAC travels with it, whatever the destination was given
  status_ = status;
  return {};
}

}  // namespace ferry::kvm::net
