#pragma once
// virtio-net (virtio v1.2, 5.1) on a TAP interface: queue 0 receives (TAP
// to guest), queue 1 transmits (guest to TAP), queue 2 is the control
// queue. Frames cross with their virtio_net_hdr_v1 as the TAP reads and
// writes it (IFF_VNET_HDR), so checksum and TSO offloads pass through.
//
// One thread per device does all the work: an epoll on the TAP and on the
// queues' kick eventfds (QueueNotify exits today, ioeventfds later). RX is
// taken from the TAP only while the guest has buffers posted; with none,
// the TAP's backlog waits in the kernel and the next RX kick re-arms it, so
// a full backlog never freezes RX. A frame that does not fit the buffers
// posted is dropped and counted.
//
// Every guest write (frame data, headers, used rings) goes through
// GuestAccess and is marked dirty for migration. A malformed chain puts the
// device in NEEDS_RESET; the VMM and the other devices carry on.
#include <array>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <optional>
#include <mutex>
#include <thread>
#include <vector>

#include "kvm/devices/guest_access.hh"
#include "kvm/devices/net/config.hh"
#include "kvm/devices/net/tap.hh"
#include "kvm/devices/virtio/queue.hh"
#include "kvm/devices/virtio/virtio.hh"
#include "kvm/eventfd.hh"

namespace ferry::kvm::net {

// Feature bits (5.1.3).
inline constexpr unsigned kNetCsum = 0, kNetGuestCsum = 1, kNetMac = 5, kNetGuestTso4 = 7, kNetGuestTso6 = 8,
                          kNetHostTso4 = 11, kNetHostTso6 = 12, kNetMrgRxbuf = 15, kNetStatus = 16, kNetCtrlVq = 17,
                          kNetCtrlRx = 18, kNetGuestAnnounce = 21;
inline constexpr std::uint16_t kNetStatusLinkUp = 1, kNetStatusAnnounce = 2;
inline constexpr std::uint32_t kNetStateVersion = 1;

struct NetFigures {
  std::uint64_t rx_packets = 0, rx_bytes = 0, rx_dropped = 0;
  std::uint64_t tx_packets = 0, tx_bytes = 0, tx_dropped = 0;
  std::uint64_t rarps_sent = 0;  // after migrations
};

// The RARP frame (with its zero vnet header) announcing `mac`.
std::vector<std::byte> rarp_frame(const Mac& mac);

class VirtioNet final : public virtio::VirtioDevice {
 public:
  static constexpr std::uint16_t kRxQueue = 0, kTxQueue = 1, kCtrlQueue = 2;
  static constexpr std::uint16_t kQueueSize = 256;
  static constexpr std::uint16_t kQueues = 3;

  static Result<std::unique_ptr<VirtioNet>> create(Tap tap, Mac mac, const GuestAccess& mem);
  ~VirtioNet() override;

  std::string kind() const override { return "virtio-net"; }
  std::uint32_t device_id() const override { return virtio::kDeviceNet; }
  std::uint64_t features() const override;
  std::vector<std::uint16_t> queue_max_sizes() const override { return {kQueueSize, kQueueSize, 64}; }
  std::uint32_t config_size() const override { return 10; }  // mac, status, max_virtqueue_pairs
  void read_config(std::uint32_t offset, std::span<std::uint8_t> data) const override;
  void write_config(std::uint32_t, std::span<const std::uint8_t>) override {}  // read-only with VERSION_1
  Status activate(std::uint64_t features, std::vector<virtio::SplitQueue*> queues, virtio::Interrupt& irq) override;
  void kick(std::uint16_t queue) override;
  void reset() override;
  void pause() override;
  void resume() override;
  // v1: the MAC and the status word (the acked features travel with the
  // transport's registers).
  std::vector<std::byte> save() const override;
  Status restore(std::span<const std::byte> state) override;

  // Asks the guest to announce itself (gratuitous ARP, IPv6 NA) after a
  // migration, when its driver acked GUEST_ANNOUNCE; false if it did not.
  bool announce();
  // On a migration's destination, once the VM runs: announce() and RARP
  // frames from the VM's MAC into the TAP on QEMU's schedule (50, 150, 250,
  // 350 and 450 ms after), on a thread of its own.
  void announce_after_migration();
  NetFigures figures() const;
  Mac mac() const;
  const Tap& tap() const { return tap_; }
  // The kick eventfds, one per queue: an ioeventfd on the queue's notify
  // write signals these directly.
  const EventFd& kick_event(std::uint16_t queue) const { return kicks_.at(queue); }

 private:
  VirtioNet(Tap tap, Mac mac, const GuestAccess& mem, EventFd wake, std::vector<EventFd> kicks, UniqueFd epoll);
  void run();
  // Each returns false once the device is broken (NEEDS_RESET reported).
  bool serve_tx();
  bool serve_rx();
  bool serve_ctrl();
  enum class Delivery { kDelivered, kDropped, kWait, kBroken };
  Delivery deliver(std::span<std::byte> frame);
  void broken(const Error& why);
  void watch_tap(bool on);
  void stop_worker();
  void stop_announcing();

  Tap tap_;
  const GuestAccess& mem_;
  EventFd wake_;
  std::vector<EventFd> kicks_;
  UniqueFd epoll_;

  mutable std::mutex mu_;  // mac_, status_, the worker's control flags
  std::condition_variable cv_;
  Mac mac_;
  std::uint16_t status_ = kNetStatusLinkUp;
  bool stop_ = false, pause_ = false, parked_ = false;
  bool stop_announce_ = false;
  std::thread worker_;
  std::thread announcer_;

  // Set by activate, used only by the worker (and by reset after it ended).
  std::uint64_t acked_ = 0;
  virtio::SplitQueue* rx_ = nullptr;
  virtio::SplitQueue* tx_ = nullptr;
  virtio::SplitQueue* ctrl_ = nullptr;
  virtio::Interrupt* irq_ = nullptr;
  bool tap_watched_ = false;
  std::vector<std::byte> frame_;
  std::vector<std::byte> pending_;  // read from the TAP, waiting for buffers
  std::vector<std::pair<std::uint16_t, std::uint32_t>> taken_;  // deliver()'s chains (head, bytes)

  std::atomic<std::uint64_t> rx_packets_{0}, rx_bytes_{0}, rx_dropped_{0};
  std::atomic<std::uint64_t> tx_packets_{0}, tx_bytes_{0}, tx_dropped_{0};
  std::atomic<std::uint64_t> rarps_sent_{0};
};

}  // namespace ferry::kvm::net
