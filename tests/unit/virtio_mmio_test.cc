// The virtio-mmio transport driven register by register as Linux's
// virtio_mmio driver does it, in front of an echo device (a test device
// type that returns every request with its readable bytes copied into its
// writable ones): identification, feature negotiation (modern only),
// queue setup, kicks, interrupts, NEEDS_RESET on a bad layout, reset, and
// save and restore with the queues where they were.
#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "kvm/devices/virtio/mmio.hh"
#include "tests/unit/virtio_driver.hh"

namespace ferry::kvm::virtio {
namespace {

using testing::Driver;
using testing::kDescWrite;
using testing::kDescNext;

constexpr std::uint64_t kBase = 0xd0000000;
constexpr std::uint64_t kFeatureEcho = 3;  // a device-type feature bit

// Serves its queue on kick, on the kicking thread.
class EchoDevice final : public VirtioDevice {
 public:
  struct Seen {
    int activations = 0, resets = 0, kicks = 0, pauses = 0, resumes = 0;
    std::uint64_t features = 0;
    std::array<std::uint8_t, 8> config{1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<std::byte> restored;
  };
  EchoDevice(Seen& seen, const GuestAccess& mem) : seen_(seen), mem_(mem) {}
  std::string kind() const override { return "virtio-echo"; }
  std::uint32_t device_id() const override { return 42; }
  std::uint64_t features() const override { return bit(kFeatureEcho); }
  std::vector<std::uint16_t> queue_max_sizes() const override { return {Driver::kSize}; }
  std::uint32_t config_size() const override { return 8; }
  void read_config(std::uint32_t offset, std::span<std::uint8_t> data) const override {
    std::memcpy(data.data(), seen_.config.data() + offset, data.size());
  }
  void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) override {
    std::memcpy(seen_.config.data() + offset, data.data(), data.size());
  }
  Status activate(std::uint64_t features, std::vector<SplitQueue*> queues, Interrupt& irq) override {
    ++seen_.activations;
    seen_.features = features;
    queue_ = queues.at(0);
    irq_ = &irq;
    return {};
  }
  void kick(std::uint16_t) override {
    ++seen_.kicks;
    for (;;) {
      auto c = queue_->pop();
      if (!c || !c->has_value()) break;
      std::vector<std::byte> data((*c)->readable_bytes);
      (void)(*c)->read(0, data);
      (void)(*c)->write(mem_, 0, data);
      (void)queue_->push((*c)->head, static_cast<std::uint32_t>(data.size()));
    }
    if (queue_->should_interrupt()) irq_->used_buffers();
  }
  void reset() override {
    ++seen_.resets;
    queue_ = nullptr;
  }
  void pause() override { ++seen_.pauses; }
  void resume() override { ++seen_.resumes; }
  std::vector<std::byte> save() const override { return {std::byte{0xec}, std::byte{0x40}}; }
  Status restore(std::span<const std::byte> state) override {
    seen_.restored.assign(state.begin(), state.end());
    return {};
  }

 private:
  Seen& seen_;
  const GuestAccess& mem_;
  SplitQueue* queue_ = nullptr;
  Interrupt* irq_ = nullptr;
};

struct Rig {
  explicit Rig(Driver& driver) : d(driver) {}
  Driver& d;
  EchoDevice::Seen seen;
  int edges = 0;
  MmioTransport t{{.id = "echo0", .base = kBase, .gsi = 5, .key = {state::SectionType::kVirtio, 0}},
                  d.mem,
                  std::make_unique<EchoDevice>(seen, d.mem),
                  [this] { ++edges; }};
  testing::MmioDriver regs{t};

  std::uint32_t rd(std::uint64_t off) { return regs.rd(off); }
  void wr(std::uint64_t off, std::uint32_t v) { regs.wr(off, v); }
  void bring_up(std::uint64_t features, QueueLayout layout) { regs.bring_up(features, {layout}); }
  std::uint64_t modern() const { return bit(kFeatureVersion1) | bit(kFeatureEcho); }
};

TEST(VirtioMmio, IdentifiesItselfAndOffersModernFeaturesOnly) {
  Driver drv;
  Rig r(drv);
  EXPECT_EQ(r.rd(0x000), 0x74726976u);  // "virt"
  EXPECT_EQ(r.rd(0x004), 2u);
  EXPECT_EQ(r.rd(0x008), 42u);
  r.wr(0x014, 0);
  const std::uint32_t low = r.rd(0x010);
  r.wr(0x014, 1);
  const std::uint32_t high = r.rd(0x010);
  EXPECT_TRUE(low & (1u << kFeatureEcho));
  EXPECT_TRUE(low & (1u << kFeatureEventIdx));
  EXPECT_TRUE(low & (1u << kFeatureIndirectDesc));
  EXPECT_EQ(high, 1u) << "VERSION_1 (bit 32) and nothing else above 31";
  r.wr(0x030, 0);
  EXPECT_EQ(r.rd(0x034), Driver::kSize);
  r.wr(0x030, 1);
  EXPECT_EQ(r.rd(0x034), 0u) << "a queue the device does not have";
  EXPECT_EQ(r.rd(0x0b0), 0xffffffffu) << "no shared memory regions";
  // Config space, byte-wide as a driver reads a MAC.
  std::array<std::uint8_t, 2> two{};
  r.t.read(r.regs.range, 0x100 + 2, two);
  EXPECT_EQ(two, (std::array<std::uint8_t, 2>{3, 4}));
  std::array<std::uint8_t, 4> past{9, 9, 9, 9};
  r.t.read(r.regs.range, 0x100 + 6, past);
  EXPECT_EQ(past, (std::array<std::uint8_t, 4>{0, 0, 0, 0})) << "a read past the config space";
  EXPECT_EQ(r.t.describe().config, "mmio=0xd0000000 irq=5");
}

TEST(VirtioMmio, FeaturesOkIsRefusedWithoutVersion1OrWithFeaturesNotOffered) {
  for (const std::uint64_t acked : {bit(kFeatureEcho), bit(kFeatureVersion1) | bit(50)}) {
    Driver drv;
  Rig r(drv);
    r.wr(0x070, kStatusAcknowledge | kStatusDriver);
    r.wr(0x024, 0);
    r.wr(0x020, static_cast<std::uint32_t>(acked));
    r.wr(0x024, 1);
    r.wr(0x020, static_cast<std::uint32_t>(acked >> 32));
    r.wr(0x070, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    EXPECT_FALSE(r.rd(0x070) & kStatusFeaturesOk) << std::hex << acked;
  }
}

TEST(VirtioMmio, KicksReachTheDeviceAndItsInterruptsTheDriver) {
  Driver drv;
  Rig r(drv);
  r.bring_up(r.modern(), r.d.layout());
  ASSERT_EQ(r.seen.activations, 1);
  EXPECT_EQ(r.seen.features, r.modern());
  EXPECT_EQ(r.rd(0x070) & kStatusNeedsReset, 0u);
  r.d.put(Driver::kData, {std::byte{'p'}, std::byte{'i'}, std::byte{'n'}, std::byte{'g'}});
  r.d.desc(0, Driver::kData, 4, kDescNext, 1);
  r.d.desc(1, Driver::kData + 0x1000, 4, kDescWrite, 0);
  r.d.make_available(0);
  r.wr(0x050, 0);  // QueueNotify
  EXPECT_EQ(r.seen.kicks, 1);
  EXPECT_EQ(r.d.used_idx(), 1);
  EXPECT_EQ(std::memcmp(r.d.at(Driver::kData + 0x1000), "ping", 4), 0);
  EXPECT_EQ(r.edges, 1);
  EXPECT_EQ(r.rd(0x060), 1u) << "used-buffer interrupt";
  r.wr(0x064, 1);
  EXPECT_EQ(r.rd(0x060), 0u);
  r.wr(0x050, 7);  // a queue it does not have
  EXPECT_EQ(r.seen.kicks, 1);
  // The layout is the driver's until reset.
  r.wr(0x030, 0);
  r.wr(0x080, 0x5000);
  EXPECT_EQ(r.rd(0x080), Driver::kDesc);
  r.wr(0x070, 0);
  EXPECT_EQ(r.seen.resets, 1);
  EXPECT_EQ(r.rd(0x070), 0u);
  EXPECT_EQ(r.rd(0x044), 0u);
  r.wr(0x050, 0);
  EXPECT_EQ(r.seen.kicks, 1) << "a reset device took a kick";
}

TEST(VirtioMmio, ABadQueueLayoutBreaksTheDeviceNotTheVmm) {
  Driver drv;
  Rig r(drv);
  r.bring_up(r.modern(), {Driver::kSize, 1ull << 40, Driver::kAvail, Driver::kUsed});
  EXPECT_EQ(r.seen.activations, 0);
  EXPECT_TRUE(r.rd(0x070) & kStatusNeedsReset);
  EXPECT_EQ(r.rd(0x060), 2u) << "a configuration interrupt tells the driver";
  EXPECT_EQ(r.edges, 1);
  EXPECT_NE(r.t.failure().find("descriptor table"), std::string::npos) << r.t.failure();
  const std::uint32_t gen = r.rd(0x0fc);
  EXPECT_GT(gen, 0u);
  // Reset and try again with a good layout.
  r.bring_up(r.modern(), r.d.layout());
  EXPECT_EQ(r.seen.activations, 1);
  EXPECT_EQ(r.rd(0x070) & kStatusNeedsReset, 0u);
  EXPECT_TRUE(r.t.failure().empty());
}

TEST(VirtioMmio, RestoredItCarriesOnWhereItWasAndKicksEveryQueue) {
  Driver drv;
  Rig a(drv);
  a.bring_up(a.modern(), drv.layout());
  for (std::uint16_t i = 0; i < 2; ++i) drv.desc(i, Driver::kData + 0x100 * i, 8, kDescWrite, 0);
  drv.make_available(0);
  a.wr(0x050, 0);
  ASSERT_EQ(drv.used_idx(), 1);
  drv.make_available(1);  // queued, not kicked: the restored device must find it
  a.t.pause();
  EXPECT_EQ(a.seen.pauses, 1);
  const auto image = a.t.save_state();

  // The same memory, a new transport: what a restore or a destination does.
  Rig b(drv);
  auto ok = b.t.restore_state(kMmioStateVersion, image);
  ASSERT_TRUE(ok) << ok.error().what();
  EXPECT_EQ(b.seen.activations, 1);
  EXPECT_EQ(b.seen.features, b.modern());
  EXPECT_EQ(b.seen.restored, (std::vector<std::byte>{std::byte{0xec}, std::byte{0x40}}));
  EXPECT_TRUE(b.rd(0x070) & kStatusDriverOk);
  EXPECT_EQ(b.rd(0x080), Driver::kDesc);
  b.t.resume();
  EXPECT_EQ(b.seen.resumes, 1);
  EXPECT_EQ(b.seen.kicks, 1) << "every queue is kicked after a restore";
  EXPECT_EQ(drv.used_idx(), 2);
  EXPECT_EQ(drv.used_elem(1).first, 1u) << "the restored queue served an entry the source had served";

  // What a damaged or foreign image gets.
  EXPECT_FALSE(b.t.restore_state(kMmioStateVersion + 1, image));
  EXPECT_FALSE(b.t.restore_state(kMmioStateVersion, std::span(image).first(image.size() - 1)));
  auto more = image;
  more.push_back(std::byte{0});
  EXPECT_FALSE(b.t.restore_state(kMmioStateVersion, more)) << "trailing bytes";
  auto queues = image;
  queues[32] = std::byte{2};  // the queue count
  auto q = b.t.restore_state(kMmioStateVersion, queues);
  ASSERT_FALSE(q);
  EXPECT_NE(q.error().what().find("2 queues, this device has 1"), std::string::npos) << q.error().what();
  auto features = image;
  features[4 + 6] = std::byte{0x04};  // bit 50 of the driver features
  auto f = b.t.restore_state(kMmioStateVersion, features);
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().what().find("does not offer"), std::string::npos) << f.error().what();
}

}  // namespace
}  // namespace ferry::kvm::virtio
